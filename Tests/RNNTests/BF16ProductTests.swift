import XCTest
@testable import RNN

/// The bf16 level of the per-step recurrent products (RNN_DP_PRODUCTS=bf16; crecurrent.h): W_hh and
/// the activations rounded to bf16 (nearest even), products accumulated in fp32 with vdpbf16ps.
/// Skipped, saying so, only where the CPU lacks AVX512_BF16.
///
/// The bounds. With ã = bf16(a), w̃ = bf16(w) (computed here the same way), the kernel's result is
/// c + Σ ã w̃ with fp32 rounding only: each of the K + 1 additions (vdpbf16ps adds the two products
/// of a k pair to a lane one after the other, each product exact in fp32) rounds by at most u =
/// 2^-24, so |out - ref| <= γ_{K+1} (|c| + Σ |ã w̃|); we allow (K + 2) ε = 2 (K + 2) u of it, ε =
/// Float.ulpOfOne, about 1e-5 of Σ |ã w̃| at K = 100. Against the unrounded a and w, bf16's relative
/// rounding is at most 2^-8 per factor, so |ã w̃ - a w| <= (2^-7 + 2^-16) |a w| term by term, plus
/// the fp32 bound above.
final class BF16ProductTests: XCTestCase {
    /// (rows, G*H, H): odd sizes, rows not a multiple of the 12/8/4-row tiles, G*H and H not a
    /// multiple of the 32-column panels, K past one block of 256 k pairs (backward K = 513, 1024).
    let shapes = [(7, 52, 13), (1, 1, 1), (13, 51, 17), (5, 40, 40), (25, 384, 128), (16, 1024, 256), (9, 513, 171), (33, 900, 300), (64, 256, 64)]

    static func bf16(_ x: Float) -> Float {  // crecurrent.c's bf16_rne, back to float
        let u = x.bitPattern
        if u & 0x7fff_ffff > 0x7f80_0000 { return Float(bitPattern: (u | 0x0040_0000) & 0xffff_0000) }
        return Float(bitPattern: ((u &+ 0x7fff &+ ((u >> 16) & 1)) >> 16) << 16)
    }

    /// out (M, N) = c + a (M, K) weff (K, N) in float64, with the factors rounded to bf16 or not;
    /// and Σ |c| + |a w| per element.
    func reference(_ a: [Float], _ c: [Float], M: Int, N: Int, K: Int, rounded: Bool, _ w: (Int, Int) -> Float) -> (out: [Double], bound: [Double]) {
        let r: (Float) -> Float = rounded ? Self.bf16 : { $0 }
        var out = [Double](repeating: 0, count: M * N), bound = out
        for i in 0..<M {
            for n in 0..<N {
                var acc = Double(c[i * N + n]), b = abs(acc)
                for k in 0..<K {
                    let t = Double(r(a[i * K + k])) * Double(r(w(k, n)))
                    acc += t
                    b += abs(t)
                }
                out[i * N + n] = acc
                bound[i * N + n] = b
            }
        }
        return (out, bound)
    }

    func requireBF16() throws {
        try XCTSkipUnless(RecurrentProducts.Level.avx512bf16.isSupported,
                          "this CPU has no AVX512_BF16 (or crecurrent.c was built without its intrinsics): bf16 products not tested")
    }

    func testBF16ProductsAgainstRoundedAndUnroundedFloat64() throws {
        try requireBF16()
        var rng = RecurrentProductTests.Rng(s: 41)
        var worstRounded = 0.0, worstUnrounded = 0.0
        for (B, GH, H) in shapes {
            let w = (0..<(GH * H)).map { _ in rng.next() / Float(H).squareRoot() }  // (G*H, H)
            let hPrev = (0..<(B * H)).map { _ in rng.next() }, dz = (0..<(B * GH)).map { _ in rng.next() }
            let z0 = (0..<(B * GH)).map { _ in rng.next() }, d0 = (0..<(B * H)).map { _ in rng.next() }
            let packed = PackedRecurrentWeights(gatesTimesHidden: GH, hidden: H, level: .avx512bf16)
            packed.pack(w)
            var outF = z0, outB = d0
            packed.forward(hPrev, rows: B, into: &outF)
            packed.backward(dz, rows: B, into: &outB)
            let name = "B=\(B) GH=\(GH) H=\(H)"
            for (label, out, M, N, K, a, c, weff) in [
                ("forward", outF, B, GH, H, hPrev, z0, { (k: Int, n: Int) in w[n * H + k] }),
                ("backward", outB, B, H, GH, dz, d0, { (k: Int, n: Int) in w[k * H + n] }),
            ] as [(String, [Float], Int, Int, Int, [Float], [Float], (Int, Int) -> Float)] {
                let r = reference(a, c, M: M, N: N, K: K, rounded: true, weff)
                let u = reference(a, c, M: M, N: N, K: K, rounded: false, weff)
                let fp32 = Double(K + 2) * Double(Float.ulpOfOne)
                for i in 0..<(M * N) {
                    let e = abs(Double(out[i]) - r.out[i])
                    worstRounded = max(worstRounded, e / r.bound[i])
                    if e > fp32 * r.bound[i] { XCTFail("\(label), \(name), element \(i): \(out[i]) vs bf16-rounded float64 \(r.out[i])"); break }
                }
                for i in 0..<(M * N) {
                    let e = abs(Double(out[i]) - u.out[i])
                    worstUnrounded = max(worstUnrounded, e / u.bound[i])
                    let tol = (0x1p-7 + 0x1p-16) * u.bound[i] + fp32 * (1 + 0x1p-7) * u.bound[i]
                    if e > tol { XCTFail("\(label), \(name), element \(i): \(out[i]) vs float64 \(u.out[i]) beyond bf16's rounding"); break }
                }
            }
        }
        print("bf16 products: worst |error| / (|c| + Σ|a w|): \(worstRounded) against the bf16-rounded float64 product, \(worstUnrounded) against the unrounded one")
        // The kernel really rounds to bf16: far closer to the rounded reference than to the unrounded one.
        XCTAssertLessThan(worstRounded, 1e-5)
        XCTAssertGreaterThan(worstUnrounded, 10 * worstRounded)
    }

    /// Bits depend only on the inputs: a row alone gives the bits it gets in a batch, again and again;
    /// the master weights are not touched by packing; repacking follows W.
    func testBF16RowsIndependentDeterministicAndRepackFollowsW() throws {
        try requireBF16()
        var rng = RecurrentProductTests.Rng(s: 7)
        let B = 29, H = 37, GH = 4 * H
        var w = (0..<(GH * H)).map { _ in rng.next() * 0.2 }
        let w0 = w
        let hPrev = (0..<(B * H)).map { _ in rng.next() }
        let packed = PackedRecurrentWeights(gatesTimesHidden: GH, hidden: H, level: .avx512bf16)
        packed.pack(w)
        XCTAssertEqual(w.map(\.bitPattern), w0.map(\.bitPattern))
        var all = [Float](repeating: 0.5, count: B * GH), again = all
        packed.forward(hPrev, rows: B, into: &all)
        packed.forward(hPrev, rows: B, into: &again)
        XCTAssertEqual(all.map(\.bitPattern), again.map(\.bitPattern))
        for b in [0, 4, 12, 28] {
            var one = [Float](repeating: 0.5, count: GH)
            hPrev.withUnsafeBufferPointer { packed.forward($0.baseAddress! + b * H, rows: 1, into: &one) }
            XCTAssertEqual(one.map(\.bitPattern), all[(b * GH)..<((b + 1) * GH)].map(\.bitPattern), "row \(b) alone differs")
        }
        w[3 * H + 2] += 1  // row 3 of W_hh: output column 3 of every row (1 is exact in bf16 at this scale)
        packed.pack(w)
        var moved = [Float](repeating: 0.5, count: B * GH)
        packed.forward(hPrev, rows: B, into: &moved)
        for b in 0..<B {
            XCTAssertEqual(moved[b * GH + 3], all[b * GH + 3] + Self.bf16(hPrev[b * H + 2]), accuracy: 0.02, "repacked W not used")
            XCTAssertEqual(moved[b * GH + 4], all[b * GH + 4])
        }
    }

    func testTheBF16Choice() throws {
        XCTAssertNotEqual(try RecurrentProducts.path(for: nil), .packed(.avx512bf16), "auto must never pick bf16")
        XCTAssertNotEqual(RecurrentProducts.Level.best, .avx512bf16)
        if RecurrentProducts.Level.avx512bf16.isSupported {
            XCTAssertEqual(try RecurrentProducts.path(for: "bf16"), .packed(.avx512bf16))
            XCTAssertTrue(RecurrentProducts.summary(.packed(.avx512bf16)).hasPrefix("products: bf16 ("))
            XCTAssertEqual(RecurrentProducts.name(.packed(.avx512bf16)), "bf16")
        } else {
            XCTAssertThrowsError(try RecurrentProducts.path(for: "bf16")) { XCTAssertTrue("\($0)".contains("RNN_DP_PRODUCTS=bf16: this CPU"), "\($0)") }
        }
    }

    /// A small character-level LSTM (2 layers, H = 64) trained 40 Adam steps on a fixed periodic
    /// sequence, once with fp32 products and once with bf16: the bf16 run's final loss is within 5%
    /// (+ 0.02 nats) of the fp32 run's, and both learned (the loss fell below half its start). The
    /// margin is loose against the 1-2% seen here (bf16 perturbs every step's W_hh h by ~2^-8).
    func testAnLSTMTrainedWithBF16ProductsReachesTheFP32Loss() throws {
        try requireBF16()
        let V = 8, T = 24, B = 12
        var spec = ModelSpec(cell: .lstm, input: .tokens(vocabulary: V), hiddenSize: 64, layers: 2, outputSize: V, loss: .crossEntropy)
        spec.averageOverTime = true
        let pattern: [Int32] = [0, 1, 2, 3, 1, 4, 5, 2, 6, 7, 3, 5, 0, 6, 4]
        var tokens = [Int32](repeating: 0, count: T * B), targets = tokens
        for t in 0..<T { for b in 0..<B {
            tokens[t * B + b] = pattern[(3 * b + t) % pattern.count]
            targets[t * B + b] = pattern[(3 * b + t + 1) % pattern.count]
        } }
        let batch = Batch(batchSize: B, steps: T, tokens: tokens, targetClasses: targets)
        func train(_ path: RecurrentProducts.Path) -> (first: Double, last: Double) {
            RecurrentProducts.$override.withValue(path) {
                let net = Network<Float>(spec: spec)
                net.initializeParameters(seed: 3)
                let adam = Adam<Float>(count: net.layout.count)
                var first = 0.0
                for step in 0..<40 {
                    net.gradients.zero()
                    let s = net.lossAndGradient(batch)
                    if step == 0 { first = s.sum / Double(T * B) }
                    net.normalizeGradients(globalSamples: B, globalSteps: T * B)
                    adam.step(parameters: net.parameters, gradients: net.gradients, learningRate: 0.01)
                }
                return (first, net.loss(batch).sum / Double(T * B))
            }
        }
        let fp32Level = RecurrentProducts.Level.best
        let fp32 = train(fp32Level == .scalar ? .openblas : .packed(fp32Level)), bf = train(.packed(.avx512bf16))
        print("bf16 products, LSTM 40 steps: loss \(fp32.first) -> \(fp32.last) with fp32 products, \(bf.first) -> \(bf.last) with bf16")
        XCTAssertLessThan(fp32.last, 0.5 * fp32.first)
        XCTAssertLessThan(bf.last, 0.5 * bf.first)
        XCTAssertLessThan(abs(bf.last - fp32.last), 0.05 * fp32.last + 0.02)
        XCTAssertNotEqual(bf.last, fp32.last, "the bf16 run must actually have used other products")
    }
}
