/// Gradient compression for the exchange: the float32 sum of a rank's gradients is rounded to 16
/// bits for the allreduce (half the bytes), summed pairwise in float32 inside the reduction, and
/// widened back; the optimizer keeps float32 throughout.
public enum Compression: String, CaseIterable, Sendable {
    case none, bf16, fp16

    /// bfloat16: the top 16 bits of the float32, rounded to nearest even (NaN kept).
    @inline(__always) public static func toBF16(_ x: Float) -> UInt16 {
        let u = x.bitPattern
        if u & 0x7fff_ffff > 0x7f80_0000 { return UInt16(truncatingIfNeeded: u >> 16) | 0x40 }
        return UInt16(truncatingIfNeeded: (u &+ 0x7fff &+ ((u >> 16) & 1)) >> 16)
    }
    @inline(__always) public static func fromBF16(_ h: UInt16) -> Float { Float(bitPattern: UInt32(h) << 16) }

    /// Writes elements `range` of `buffer`, each divided by the number of ranks (the reduction
    /// then forms the mean, which stays in fp16's range), as 16-bit floats into `scratch`.
    @inline(__always) public func encode(_ buffer: UnsafeMutableBufferPointer<Float>, _ range: Range<Int>,
                                         into scratch: UnsafeMutableBufferPointer<UInt16>, ranks: Int) {
        let inv = 1 / Float(ranks)
        switch self {
        case .none: preconditionFailure("no encoding")
        case .bf16: for i in range { scratch[i] = Compression.toBF16(buffer[i] * inv) }
        case .fp16: for i in range { scratch[i] = Float16(buffer[i] * inv).bitPattern }
        }
    }

    /// The twin of `encode`: the reduced 16-bit means of `range`, widened and multiplied back by
    /// the number of ranks into `buffer`.
    @inline(__always) public func decode(_ scratch: UnsafeMutableBufferPointer<UInt16>, _ range: Range<Int>,
                                         into buffer: UnsafeMutableBufferPointer<Float>, ranks: Int) {
        let size = Float(ranks)
        switch self {
        case .none: preconditionFailure("no encoding")
        case .bf16: for i in range { buffer[i] = Compression.fromBF16(scratch[i]) * size }
        case .fp16: for i in range { buffer[i] = Float(Float16(bitPattern: scratch[i])) * size }
        }
    }

    /// Sums `buffer` over ranks through 16-bit floats in one blocking allreduce, using `scratch`
    /// (at least buffer.count).
    public func allreduce(_ buffer: UnsafeMutableBufferPointer<Float>, scratch: UnsafeMutableBufferPointer<UInt16>, comm: Communicator) throws {
        guard self != .none else { return try comm.allreduceSum(buffer) }
        let n = buffer.count
        encode(buffer, 0..<n, into: scratch, ranks: comm.size)
        try comm.allreduceSumHalf(UnsafeMutableBufferPointer(rebasing: scratch[0..<n]), bfloat: self == .bf16)
        decode(scratch, 0..<n, into: buffer, ranks: comm.size)
    }
}
