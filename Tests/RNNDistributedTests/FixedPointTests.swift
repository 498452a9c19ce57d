import XCTest
import RNN
@testable import RNNDistributed

/// The exact sums of training.reproducible (the multi-rank side is in MultiRankTests).
final class FixedPointTests: XCTestCase {
    /// The scale leaves room for M contributions at the largest magnitude: M * round(A * 2^e) < 2^62.
    func testExponentBoundsTheSumBelowTwoToThe62() {
        for maxAbs in [1e-40, 1.401298464324817e-45, 3e-8, 0.75, 1.0, 1.5, 2.0, 1234.5, 3.4028234663852886e38] {
            for m in [1, 2, 3, 8, 1000, 1 << 20] {
                let e = FixedPoint.exponent(maxAbs: maxAbs, contributions: m)
                let q = FixedPoint.quantize(maxAbs, scale: Double(sign: .plus, exponent: e, significand: 1))
                XCTAssertLessThanOrEqual(Double(q) * Double(m), 0x1p62, "A=\(maxAbs) M=\(m)")
                // ... and uses that room: the largest term is at least 2^(60 - ceil(log2 M)).
                var c = 0
                while (1 << c) < m { c += 1 }
                XCTAssertGreaterThanOrEqual(Double(q), Double(sign: .plus, exponent: 60 - c, significand: 1), "A=\(maxAbs) M=\(m)")
            }
        }
        XCTAssertEqual(FixedPoint.exponent(maxAbs: 0, contributions: 5), 0)
    }

    /// The same contributions grouped into different "ranks" give the same bits (here the
    /// grouping is modelled by which parts one process adds first; integer sums are associative),
    /// while plain float addition in those orders does not.
    func testSumIsIndependentOfGroupingAndOrder() throws {
        var rng = Xoshiro256(seed: 3, stream: 0, index: 0)
        let n = 64
        let parts: [[Float]] = (0..<24).map { _ in (0..<n).map { _ in Float(rng.nextDouble() - 0.5) * Float(1 << rng.nextInt(below: 20)) } }
        let comm = SingleProcessCommunicator()
        let reduction = FixedPointReduction(comm: comm, count: n, segments: [0..<10, 10..<n])
        func exact(_ order: [Int]) throws -> [UInt32] {
            var out = [Float](repeating: 0, count: n)
            let copies = order.map { parts[$0] }
            try copies.withUnsafeBufferPointers { ptrs in
                try reduction.reduce(ptrs, into: &out, totalParts: parts.count)
            }
            return out.map(\.bitPattern)
        }
        let forward = Array(0..<parts.count), backward = Array(forward.reversed())
        let shuffled = forward.sorted { ($0 * 7919) % 24 < ($1 * 7919) % 24 }
        XCTAssertEqual(try exact(forward), try exact(backward))
        XCTAssertEqual(try exact(forward), try exact(shuffled))
        // Within float rounding of the exact sum (computed in Double here).
        let result = try exact(forward).map { Float(bitPattern: $0) }
        for i in 0..<n {
            let truth = parts.reduce(0.0) { $0 + Double($1[i]) }
            XCTAssertEqual(Double(result[i]), truth, accuracy: abs(truth) * 1e-6 + 1e-30)
        }
        // Plain float sums in the two orders differ somewhere (what the mode exists to avoid).
        let f1 = (0..<n).map { i in forward.reduce(Float(0)) { $0 + parts[$1][i] } }
        let f2 = (0..<n).map { i in backward.reduce(Float(0)) { $0 + parts[$1][i] } }
        XCTAssertNotEqual(f1, f2)
    }

    /// A NaN or an infinity poisons its segment (and only it) with NaN: detected, never wrapped.
    func testNonFiniteContributionMarksItsSegment() throws {
        let comm = SingleProcessCommunicator()
        let reduction = FixedPointReduction(comm: comm, count: 4, segments: [0..<2, 2..<4])
        let a: [Float] = [1, 2, .infinity, 4], b: [Float] = [1, 2, 3, .nan]
        var out = [Float](repeating: 0, count: 4)
        try [a, b].withUnsafeBufferPointers { try reduction.reduce($0, into: &out, totalParts: 2) }
        XCTAssertEqual(Array(out[0..<2]), [2, 4])
        XCTAssertTrue(out[2].isNaN && out[3].isNaN)
        let sums = try FixedPoint.sum([[1.5, .nan, 1e300], [2.25, 1, 1e300]], count: 3, totalParts: 2, comm: comm)
        XCTAssertEqual(sums[0], 3.75)
        XCTAssertTrue(sums[1].isNaN)
        XCTAssertTrue(sums[2].isNaN, "magnitudes beyond 2^900 are refused, not wrapped")
    }
}

extension Array where Element == [Float] {
    /// Calls `body` with pointers to copies of the inner arrays (freed afterwards).
    func withUnsafeBufferPointers<R>(_ body: ([UnsafePointer<Float>]) throws -> R) rethrows -> R {
        let copies: [UnsafeMutablePointer<Float>] = map { values in
            let p = UnsafeMutablePointer<Float>.allocate(capacity: Swift.max(values.count, 1))
            p.initialize(from: values, count: values.count)
            return p
        }
        defer { copies.forEach { $0.deallocate() } }
        return try body(copies.map { UnsafePointer($0) })
    }
}
