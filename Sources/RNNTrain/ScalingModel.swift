import Foundation
import RNNDistributed

/// The latency-bandwidth (alpha-beta) model of a ring allreduce (Thakur, Rabenseifner & Gropp,
/// "Optimization of collective communication operations in MPICH", 2005): on p ranks a sum of
/// n bytes takes 2 (p - 1) steps, each sending n / p bytes, so
///     T(n, p) = 2 (p - 1) alpha + 2 (p - 1) / p * n * beta
/// with alpha the per-message latency (s) and beta the time per byte (s/B).
public struct AllreduceModel: Equatable, Sendable {
    public var alpha: Double
    public var beta: Double

    public init(alpha: Double, beta: Double) {
        self.alpha = alpha
        self.beta = beta
    }

    public func time(bytes n: Double, ranks p: Int) -> Double {
        guard p > 1 else { return 0 }
        let q = Double(p)
        return 2 * (q - 1) * alpha + 2 * (q - 1) / q * n * beta
    }

    /// Fit of alpha and beta to measured (bytes, seconds) points at p ranks, by least squares on
    /// the relative error (weights 1/T^2), so that the small messages, which measure alpha, count
    /// as much as the large ones, which measure beta.
    public static func fit(_ points: [(bytes: Double, seconds: Double)], ranks p: Int) -> AllreduceModel? {
        guard p > 1, points.count >= 2 else { return nil }
        let q = Double(p)
        // T = a * x1 + b * x2 with x1 = 2 (p - 1), x2 = 2 (p - 1) / p * n: one regressor after
        // dividing by x1: T / x1 = alpha + beta * n / p.
        let xs = points.map { $0.bytes / q }, ys = points.map { $0.seconds / (2 * (q - 1)) }
        guard ys.allSatisfy({ $0 > 0 }) else { return nil }
        let ws = ys.map { 1 / ($0 * $0) }
        let sw = ws.reduce(0, +)
        let mx = zip(ws, xs).map { $0 * $1 }.reduce(0, +) / sw, my = zip(ws, ys).map { $0 * $1 }.reduce(0, +) / sw
        var sxx = 0.0, sxy = 0.0
        for i in xs.indices { sxx += ws[i] * (xs[i] - mx) * (xs[i] - mx); sxy += ws[i] * (xs[i] - mx) * (ys[i] - my) }
        guard sxx > 0 else { return nil }
        let beta = sxy / sxx
        return AllreduceModel(alpha: my - beta * mx, beta: beta)
    }

    /// Predicted step time and weak-scaling efficiency at p ranks for a model whose step computes
    /// for `compute` seconds and exchanges `bytes` of gradient, of which a fraction `overlap` of
    /// the communication hides behind the backward pass.
    public func project(compute: Double, bytes: Double, ranks p: Int, overlap: Double = 0) -> (step: Double, efficiency: Double) {
        let comm = time(bytes: bytes, ranks: p)
        let exposed = max(comm * (1 - overlap), comm - compute)
        let step = compute + max(exposed, 0)
        return (step, compute / step)
    }
}

extension Bench {
    /// MPI_Allreduce (in place, float sum) latency over message sizes: the median of `repeats`
    /// after a warm-up, the slowest rank's time.
    public static func allreduceTimes(comm: Communicator, sizes: [Int], repeats: Int) throws -> [(bytes: Int, seconds: Double)] {
        var out: [(Int, Double)] = []
        for bytes in sizes {
            let n = max(1, bytes / 4)
            var buffer = [Float](repeating: 1, count: n)
            var times: [Double] = []
            for i in 0..<(repeats + 2) {
                try comm.barrier()
                let t0 = monotonicSeconds()
                try buffer.withUnsafeMutableBufferPointer { try comm.allreduceSum($0) }
                if i >= 2 { times.append(monotonicSeconds() - t0) }
            }
            var m = [median(times)]
            try comm.allreduceMax(&m)
            out.append((n * 4, m[0]))
        }
        return out
    }
}
