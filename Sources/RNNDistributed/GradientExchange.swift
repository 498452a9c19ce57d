#if canImport(Glibc)
import Glibc
#endif

/// The gradient exchange: the flat gradient buffer cut into buckets of about `bucketBytes`,
/// reduced with nonblocking allreduces started as soon as their gradients are final, so that
/// communication overlaps the rest of the backward pass (PyTorch DDP's reducer, in miniature).
///
/// Gradients become final from the end of the buffer backwards (the head, then the top layer,
/// ...), so buckets are cut from the end, and `ready(from:)` announces that everything from an
/// offset to the end is final. Every rank cuts the same buckets and starts them in the same order.
/// `finish()` waits for the rest and returns the time spent waiting (the exposed communication).
public final class GradientExchange {
    let comm: Communicator
    let buffer: UnsafeMutablePointer<Float>
    /// Buckets as ranges of the buffer, in the order they are started (from the end).
    public let buckets: [Range<Int>]
    private var next = 0  // index of the next bucket to start
    static let maxOutstanding = 128  // below CMPI_MAX_REQUESTS
    private var pending: [(id: Int, bucket: Int, started: Double)] = []
    /// Seconds from each bucket's start to its observed completion (summed) and waiting in finish().
    public private(set) var communicationSeconds = 0.0
    public private(set) var exposedSeconds = 0.0

    public init(comm: Communicator, buffer: UnsafeMutableBufferPointer<Float>, bucketBytes: Int) {
        self.comm = comm
        self.buffer = buffer.baseAddress!
        let per = max(1, bucketBytes / MemoryLayout<Float>.stride)
        var cuts: [Range<Int>] = []
        var hi = buffer.count
        while hi > 0 {
            let lo = max(0, hi - per)
            cuts.append(lo..<hi)
            hi = lo
        }
        buckets = cuts
    }

    /// Starts a new step.
    public func begin() {
        next = 0
        pending = []
        communicationSeconds = 0
        exposedSeconds = 0
    }

    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }

    /// Gradients at [offset, end) are final: start every bucket that lies wholly inside.
    public func ready(from offset: Int) throws {
        while next < buckets.count && buckets[next].lowerBound >= offset {
            // The shim holds a bounded number of requests: complete the oldest first when full,
            // the same on every rank (the decision depends on counts only).
            if pending.count >= GradientExchange.maxOutstanding {
                let oldest = pending.removeFirst()
                try comm.wait(oldest.id)
                communicationSeconds += GradientExchange.now() - oldest.started
            }
            let b = buckets[next]
            let id = try comm.startAllreduceSum(UnsafeMutableBufferPointer(start: buffer + b.lowerBound, count: b.count))
            pending.append((id, next, GradientExchange.now()))
            next += 1
        }
        try progress()
    }

    /// Lets MPI advance outstanding reductions (call now and then during the backward pass).
    public func progress() throws {
        var still: [(id: Int, bucket: Int, started: Double)] = []
        for p in pending {
            if try comm.test(p.id) { communicationSeconds += GradientExchange.now() - p.started } else { still.append(p) }
        }
        pending = still
    }

    /// Starts what is left and waits for everything.
    public func finish() throws {
        try ready(from: 0)
        let t0 = GradientExchange.now()
        for p in pending {
            try comm.wait(p.id)
            communicationSeconds += GradientExchange.now() - p.started
        }
        pending = []
        exposedSeconds = GradientExchange.now() - t0
    }
}

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

    /// Sums `buffer` over ranks through 16-bit floats, using `scratch` (at least buffer.count).
    /// Each rank's contribution is divided by the number of ranks before rounding (the reduction
    /// then forms the mean, which stays in fp16's range) and the result multiplied back.
    public func allreduce(_ buffer: UnsafeMutableBufferPointer<Float>, scratch: UnsafeMutableBufferPointer<UInt16>, comm: Communicator) throws {
        let n = buffer.count
        let inv = 1 / Float(comm.size), size = Float(comm.size)
        switch self {
        case .none:
            try comm.allreduceSum(buffer)
        case .bf16:
            for i in 0..<n { scratch[i] = Compression.toBF16(buffer[i] * inv) }
            try comm.allreduceSumHalf(UnsafeMutableBufferPointer(rebasing: scratch[0..<n]), bfloat: true)
            for i in 0..<n { buffer[i] = Compression.fromBF16(scratch[i]) * size }
        case .fp16:
            for i in 0..<n { scratch[i] = Float16(buffer[i] * inv).bitPattern }
            try comm.allreduceSumHalf(UnsafeMutableBufferPointer(rebasing: scratch[0..<n]), bfloat: false)
            for i in 0..<n { buffer[i] = Float(Float16(bitPattern: scratch[i])) * size }
        }
    }
}
