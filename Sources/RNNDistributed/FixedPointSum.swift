/// Sums over ranks whose bits do not depend on how the terms are split among ranks or in which
/// order they are added (training.reproducible, docs/REPRODUCIBILITY.md).
///
/// Floating-point addition is not associative, so an allreduce of floats gives bits that depend on
/// the number of ranks and on the reduction tree. Integer addition is associative. So every
/// contribution x (a micro-shard's gradient, a loss sum, ...) is converted once to 64-bit fixed
/// point, q = round(x * 2^e), the integers are summed (in any order, on any number of ranks), and
/// the sum is converted back once, s = Q * 2^-e.
///
/// The scale 2^e is one power of two per segment (a tensor, or a single value), agreed on by every
/// rank with an allreduce(max) of the contributions' magnitudes: with A the largest |x| of the
/// segment over all contributions and M the number of contributions, e is chosen so that
/// A * 2^e < 2^(62 - ceil(log2 M)). Then every |q| <= 2^(62 - ceil(log2 M)) and any partial sum of
/// at most M of them stays below 2^62 < 2^63: overflow is impossible by construction. A segment
/// holding a NaN or an infinity (or a magnitude too large to scale, above 2^900) yields NaN in
/// every element, which the trainer's non-finite check then reports; it never wraps silently.
///
/// Precision: the largest element keeps 62 - ceil(log2 M) bits, far more than float32's 24, so
/// every float32 contribution within a factor 2^(38 - ceil(log2 M)) of its segment's largest is
/// converted exactly; smaller ones are rounded to a step of about A * 2^(ceil(log2 M) - 61).
public enum FixedPoint {
    /// Magnitudes above this are treated as overflow (2^e would leave Double's range).
    public static let largestMagnitude = 0x1p900

    /// The exponent e for `contributions` terms of magnitude at most `maxAbs` (finite, >= 0).
    public static func exponent(maxAbs: Double, contributions: Int) -> Int {
        guard maxAbs > 0 else { return 0 }
        var bitsForCount = 0  // ceil(log2 M)
        while (1 << bitsForCount) < max(contributions, 1) { bitsForCount += 1 }
        // maxAbs < 2^(E + 1) with E = maxAbs.exponent; so maxAbs * 2^e < 2^(62 - bitsForCount).
        let e = 62 - bitsForCount - (Int(maxAbs.exponent) + 1)
        return min(e, 1000)
    }

    @inline(__always) static func power(_ e: Int) -> Double { Double(sign: .plus, exponent: e, significand: 1) }

    /// round(x * 2^e) to the nearest integer (ties to even).
    @inline(__always) public static func quantize(_ x: Double, scale: Double) -> Int64 {
        Int64((x * scale).rounded(.toNearestOrEven))
    }

    /// |x| with NaN as +infinity (so a max over it reports the NaN).
    @inline(__always) static func magnitude(_ x: Double) -> Double { x.isNaN ? .infinity : abs(x) }

    /// Element-wise sum over all ranks of this rank's `parts` (each of the same length n); every
    /// element has its own scale. `totalParts` is the number of parts summed over all ranks.
    /// Collective: every rank calls it with the same n and totalParts (a rank may have no parts).
    public static func sum(_ parts: [[Double]], count n: Int, totalParts: Int, comm: Communicator) throws -> [Double] {
        var maxima = [Double](repeating: 0, count: n)
        for p in parts {
            precondition(p.count == n)
            for i in 0..<n { maxima[i] = max(maxima[i], magnitude(p[i])) }
        }
        try comm.allreduceMax(&maxima)
        var acc = [Int64](repeating: 0, count: n)
        var exponents = [Int](repeating: 0, count: n)
        for i in 0..<n where maxima[i].isFinite && maxima[i] <= largestMagnitude {
            exponents[i] = exponent(maxAbs: maxima[i], contributions: totalParts)
            let scale = power(exponents[i])
            for p in parts { acc[i] = acc[i] &+ quantize(p[i], scale: scale) }
        }
        try comm.allreduceSum(&acc)
        return (0..<n).map { i in
            maxima[i].isFinite && maxima[i] <= largestMagnitude ? Double(acc[i]) * power(-exponents[i]) : .nan
        }
    }
}

/// The exact gradient reduction of training.reproducible: the flat float32 gradients of this
/// rank's micro-shards, summed over all micro-shards of all ranks with one scale per segment
/// (tensor), in fixed point. Workspaces are sized once.
public final class FixedPointReduction {
    let comm: Communicator
    /// Segments of the flat buffer that share a scale: the parameter tensors.
    public let segments: [Range<Int>]
    public let count: Int
    private var accumulator: [Int64]  // (P)
    private var maxima: [Double]      // (segments)
    private var exponents: [Int]      // (segments)
    private var workspaces: [UnsafeMutablePointer<Float>] = []  // (P) each: micro-shard gradients

    public init(comm: Communicator, count: Int, segments: [Range<Int>]) {
        precondition(segments.reduce(0) { $0 + $1.count } == count, "segments must cover the buffer")
        self.comm = comm
        self.count = count
        self.segments = segments
        accumulator = [Int64](repeating: 0, count: count)
        maxima = [Double](repeating: 0, count: segments.count)
        exponents = [Int](repeating: 0, count: segments.count)
    }

    deinit { workspaces.forEach { $0.deallocate() } }

    /// The micro-shard loop of reproducible mode: `compute(n)` leaves micro-shard n's gradient in
    /// `gradients` (P), for n in 0..<count. Every one but the last is kept in a workspace made
    /// once, the last stays in place, and then the sum over every rank's micro-shards (`totalParts`
    /// of them) is written to `gradients`.
    public func reduceMicroShards(_ count: Int, gradients: UnsafeMutablePointer<Float>, totalParts: Int,
                                  compute: (Int) throws -> Void) throws {
        while workspaces.count < count - 1 {
            let w = UnsafeMutablePointer<Float>.allocate(capacity: max(self.count, 1))
            w.initialize(repeating: 0, count: max(self.count, 1))
            workspaces.append(w)
        }
        var parts: [UnsafePointer<Float>] = []
        for n in 0..<count {
            try compute(n)
            if n < count - 1 {
                workspaces[n].update(from: gradients, count: self.count)
                parts.append(UnsafePointer(workspaces[n]))
            } else {
                parts.append(UnsafePointer(gradients))
            }
        }
        try reduce(parts, into: gradients, totalParts: totalParts)
    }

    /// Writes into `out` (P) the sum of every rank's `parts` (each P floats; this rank's micro-
    /// shard gradients). `totalParts`: the number of parts over all ranks. `out` may be one of
    /// the parts. Segments with a non-finite value anywhere become NaN.
    public func reduce(_ parts: [UnsafePointer<Float>], into out: UnsafeMutablePointer<Float>, totalParts: Int) throws {
        for (s, r) in segments.enumerated() {
            var m: Float = 0
            for p in parts {
                for i in r {
                    let a = abs(p[i])
                    if !(a <= m) { m = a.isNaN ? .infinity : a }
                }
            }
            maxima[s] = Double(m)
        }
        try comm.allreduceMax(&maxima)
        try accumulator.withUnsafeMutableBufferPointer { acc in
            for (s, r) in segments.enumerated() {
                let ok = maxima[s].isFinite && maxima[s] <= FixedPoint.largestMagnitude
                exponents[s] = ok ? FixedPoint.exponent(maxAbs: maxima[s], contributions: totalParts) : 0
                let scale = FixedPoint.power(exponents[s])
                for i in r { acc[i] = 0 }
                guard ok else { continue }
                for p in parts {
                    for i in r { acc[i] = acc[i] &+ FixedPoint.quantize(Double(p[i]), scale: scale) }
                }
            }
            try comm.allreduceSum(acc)
            for (s, r) in segments.enumerated() {
                let ok = maxima[s].isFinite && maxima[s] <= FixedPoint.largestMagnitude
                let inverse = FixedPoint.power(-exponents[s])
                for i in r { out[i] = ok ? Float(Double(acc[i]) * inverse) : .nan }
            }
        }
    }
}
