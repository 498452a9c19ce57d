import XCTest
@testable import RNN

/// The 8-lane Float kernels (VectorKernels.swift) against the scalar reference kernels run in
/// Double, for every width 1...19 so that rows with a partial last chunk are covered, and the SIMD
/// elementary functions against the scalar FastMath ones, bit for bit.
final class VectorKernelTests: XCTestCase {
    /// Arguments: a dense sweep, the branch points of exp and tanh, and the special values.
    func arguments() -> [Float] {
        var xs: [Float] = [0, -0, .nan, .infinity, -.infinity, .leastNonzeroMagnitude, -.leastNormalMagnitude,
                           0.625, -0.625, Float(0.625).nextDown, 44, 44.5, -87.33654, Float(-87.33654).nextDown, 88.37626,
                           Float(88.37626).nextUp, 100, -100, 1e-30, -1e-30, .greatestFiniteMagnitude]
        var x: Float = -110
        while x < 110 { xs.append(x); x += 0.000_73 * (1 + abs(x)) }
        while xs.count % 8 != 0 { xs.append(0.5) }
        return xs
    }

    func assertSameBits(_ vector: (Float8) -> Float8, _ scalar: (Float) -> Float, _ name: String) {
        let xs = arguments()
        var checked = 0
        for c in stride(from: 0, to: xs.count, by: 8) {
            let v = vector(Float8(xs[c..<c + 8]))
            for i in 0..<8 {
                let s = scalar(xs[c + i])
                if s.isNaN { XCTAssertTrue(v[i].isNaN, "\(name)(\(xs[c + i]))") } else {
                    XCTAssertEqual(v[i].bitPattern, s.bitPattern, "\(name)(\(xs[c + i])): \(v[i]) vs \(s)")
                }
                checked += 1
            }
        }
        XCTAssertGreaterThan(checked, 10_000)
    }

    func testSIMDFunctionsEqualScalarOnesBitForBit() {
        assertSameBits(FastMath.exp, FastMath.exp, "exp")
        assertSameBits(FastMath.tanh, FastMath.tanh, "tanh")
        assertSameBits(FastMath.sigmoid, FastMath.sigmoid, "sigmoid")
    }

    // MARK: cell kernels

    /// n random floats in [-a, a], and the same values as Double.
    func random(_ n: Int, _ a: Float, _ rng: inout Xoshiro256) -> ([Float], [Double]) {
        let f = (0..<n).map { _ in a * (2 * rng.nextUniform() - 1) }
        return (f, f.map(Double.init))
    }

    /// Each buffer gets 8 guard elements after its end; a kernel must leave them alone.
    let guardValue: Float = 1234.5
    func guarded(_ x: [Float]) -> [Float] { x + [Float](repeating: guardValue, count: 8) }
    func assertClose(_ got: [Float], _ want: [Double], _ what: String, tol: Double = 2e-6) {
        XCTAssertEqual(got.count, want.count + 8, what)
        for (i, w) in want.enumerated() {
            XCTAssertEqual(Double(got[i]), w, accuracy: tol * max(1, abs(w)), "\(what)[\(i)]")
        }
        XCTAssertEqual(Array(got.suffix(8)), [Float](repeating: guardValue, count: 8), "\(what): wrote past the end")
    }

    func testLSTMKernelsMatchTheDoubleReference() {
        var rng = Xoshiro256(seed: 7)
        for H in 1...19 {
            let B = 3
            let (z, zd) = random(B * 4 * H, 6, &rng), (cp, cpd) = random(B * H, 2, &rng)
            var gates = guarded(z), c = guarded([Float](repeating: 0, count: B * H)), h = c
            var gd = zd, cd = [Double](repeating: 0, count: B * H), hd = cd
            gates.withUnsafeMutableBufferPointer { g in c.withUnsafeMutableBufferPointer { cb in h.withUnsafeMutableBufferPointer { hb in
                VectorKernels.lstmForward(g.baseAddress!, cp, cb.baseAddress!, hb.baseAddress!, B, H) } } }
            Kernels.lstmForward(&gd, cpd, &cd, &hd, B, H)
            assertClose(gates, gd, "lstm gates H=\(H)")
            assertClose(c, cd, "lstm c H=\(H)")
            assertClose(h, hd, "lstm h H=\(H)")

            let (dh, dhd) = random(B * H, 1, &rng), (dc0, dc0d) = random(B * H, 1, &rng)
            var dc = guarded(dc0), dz = guarded([Float](repeating: 0, count: B * 4 * H))
            var dcd = dc0d, dzd = [Double](repeating: 0, count: B * 4 * H)
            let a = Array(gates.prefix(B * 4 * H)), cc = Array(c.prefix(B * H))
            dc.withUnsafeMutableBufferPointer { dcb in dz.withUnsafeMutableBufferPointer { dzb in
                VectorKernels.lstmBackward(dh, dcb.baseAddress!, a, cc, cp, dzb.baseAddress!, B, H) } }
            Kernels.lstmBackward(dhd, &dcd, a.map(Double.init), cc.map(Double.init), cpd, &dzd, B, H)
            assertClose(dc, dcd, "lstm dc H=\(H)")
            assertClose(dz, dzd, "lstm dz H=\(H)")
        }
    }

    func testGRUKernelsMatchTheDoubleReference() {
        var rng = Xoshiro256(seed: 11)
        for H in 1...19 {
            let B = 3
            let (x, xd) = random(B * 3 * H, 5, &rng), (u, ud) = random(B * 3 * H, 5, &rng), (hp, hpd) = random(B * H, 1, &rng)
            var gates = guarded(x), h = guarded([Float](repeating: 0, count: B * H)), hn = h
            var gd = xd, hd = [Double](repeating: 0, count: B * H), hnd = hd
            gates.withUnsafeMutableBufferPointer { g in h.withUnsafeMutableBufferPointer { hb in hn.withUnsafeMutableBufferPointer { nb in
                VectorKernels.gruForward(g.baseAddress!, u, hp, hb.baseAddress!, nb.baseAddress!, B, H) } } }
            Kernels.gruForward(&gd, ud, hpd, &hd, &hnd, B, H)
            assertClose(gates, gd, "gru gates H=\(H)")
            assertClose(h, hd, "gru h H=\(H)")
            assertClose(hn, hnd, "gru hn H=\(H)")

            let (dh, dhd) = random(B * H, 1, &rng), (dp0, dp0d) = random(B * H, 1, &rng)
            var dxi = guarded([Float](repeating: 0, count: B * 3 * H)), dhh = dxi, dhPrev = guarded(dp0)
            var dxid = [Double](repeating: 0, count: B * 3 * H), dhhd = dxid, dhPrevd = dp0d
            let a = Array(gates.prefix(B * 3 * H)), n = Array(hn.prefix(B * H))
            dxi.withUnsafeMutableBufferPointer { p in dhh.withUnsafeMutableBufferPointer { q in dhPrev.withUnsafeMutableBufferPointer { r in
                VectorKernels.gruBackward(dh, a, n, hp, p.baseAddress!, q.baseAddress!, r.baseAddress!, B, H) } } }
            Kernels.gruBackward(dhd, a.map(Double.init), n.map(Double.init), hpd, &dxid, &dhhd, &dhPrevd, B, H)
            assertClose(dxi, dxid, "gru dxi H=\(H)")
            assertClose(dhh, dhhd, "gru dhh H=\(H)")
            assertClose(dhPrev, dhPrevd, "gru dhPrev H=\(H)")
        }
    }

    func testActivationsMatchTheDoubleReference() {
        var rng = Xoshiro256(seed: 3)
        for n in 1...19 {
            for act in [Activation.tanh, .sigmoid] {
                let (z, zd) = random(n, 9, &rng)
                var v = guarded(z), d = zd
                v.withUnsafeMutableBufferPointer { VectorKernels.activationForward(act, 0, $0.baseAddress!, n) }
                Kernels.activationForward(act, 0, &d, n)
                assertClose(v, d, "\(act) n=\(n)")
            }
        }
    }

    /// Softmax cross-entropy for every class count 1...19 and 65 (tiny-shakespeare's vocabulary):
    /// random rows, a row of large negative logits (a zero-padded lane would win its max), and
    /// rows whose max is tied at two places with the target on either one (the argmax is the first
    /// of them, so one of the two counts as correct). Gradient, loss and correct count against the
    /// Double reference.
    func testSoftmaxCrossEntropyMatchesTheDoubleReference() {
        var rng = Xoshiro256(seed: 11)
        for classes in Array(1...19) + [65] {
            var rowsF: [[Float]] = [], targets: [Int32] = []
            for _ in 0..<3 {
                rowsF.append(random(classes, 9, &rng).0)
                targets.append(Int32(rng.next() % UInt64(classes)))
            }
            rowsF.append((0..<classes).map { _ in -500 - 3 * rng.nextUniform() })
            targets.append(Int32(classes - 1))
            if classes >= 2 {
                for tieTarget in 0..<2 {
                    var row = random(classes, 4, &rng).0
                    let a = Int(rng.next() % UInt64(classes - 1)), b = a + 1 + Int(rng.next() % UInt64(classes - 1 - a))
                    row[a] = 7.25; row[b] = 7.25
                    rowsF.append(row)
                    targets.append(Int32(tieTarget == 0 ? a : b))
                }
            }
            let rows = rowsF.count, scale = Float(1) / Float(rows)
            var z = guarded(rowsF.flatMap { $0 }), zd = rowsF.flatMap { $0 }.map(Double.init)
            let got = z.withUnsafeMutableBufferPointer {
                VectorKernels.softmaxCrossEntropy($0.baseAddress!, rows, classes, targets, scale)
            }
            let want = Kernels.softmaxCrossEntropy(&zd, rows, classes, targets, Double(scale))
            assertClose(z, zd, "softmax gradient classes=\(classes)")
            XCTAssertEqual(got.loss, want.loss, accuracy: 1e-5 * max(1, abs(want.loss)), "loss classes=\(classes)")
            XCTAssertEqual(got.correct, want.correct, "correct classes=\(classes)")
            if classes >= 2 { XCTAssertGreaterThanOrEqual(want.correct, 1, "a tied row counts once") }
        }
    }

    /// Adam's 8-lane update against the scalar kernel, bit for bit (each operation is correctly
    /// rounded either way), for every length 1...19 and 100, over three steps so that m and v are
    /// the kernels' own.
    func testAdamUpdateEqualsTheScalarKernelBitForBit() {
        var rng = Xoshiro256(seed: 13)
        for n in Array(1...19) + [100] {
            let p0 = random(n, 1, &rng).0
            var pv = p0, ps = p0
            var mv = [Float](repeating: 0, count: n), ms = mv, vv = mv, vs = mv
            for t in 1...3 {
                let g = random(n, 0.1, &rng).0
                let bc1 = 1 - pow(0.9, Double(t)), bc2 = 1 - pow(0.999, Double(t))
                let c = AdamCoefficients<Float>(w1: 0.1, b2: 0.999, w2: Float(1) - 0.999, eps: 1e-8,
                                                bc2Sqrt: Float(bc2.squareRoot()), stepSize: Float(1e-2 / bc1))
                VectorKernels.adamUpdate(n, &pv, g, &mv, &vv, c)
                Kernels.adamUpdate(n, &ps, g, &ms, &vs, c)
            }
            XCTAssertEqual(pv.map(\.bitPattern), ps.map(\.bitPattern), "p n=\(n)")
            XCTAssertEqual(mv.map(\.bitPattern), ms.map(\.bitPattern), "m n=\(n)")
            XCTAssertEqual(vv.map(\.bitPattern), vs.map(\.bitPattern), "v n=\(n)")
            XCTAssertNotEqual(pv, p0, "n=\(n): the parameters did not move")
        }
    }

    /// The token gather and its scatter twin through the transposed table against their
    /// definitions (out[r, j] += w[j*V + tok_r]; dw[j*V + tok_r] += d[r, j]): the gather bit for
    /// bit, the scatter bit for bit into a zeroed dw and within rounding into a nonzero one, and
    /// the in-place path (no table) the same.
    func testTokenGatherAndScatterMatchTheirDefinitions() {
        var rng = Xoshiro256(seed: 7)
        for (V, cols, rows) in [(1, 3, 5), (5, 12, 17), (65, 40, 33), (13, 1, 1)] {
            let w = (0..<cols * V).map { _ in Float(rng.nextDouble() * 2 - 1) }
            let d = (0..<rows * cols).map { _ in Float(rng.nextDouble() * 2 - 1) }
            let tokens = (0..<rows).map { _ in Int32(rng.next() % UInt64(V)) }
            let start = (0..<rows * cols).map { _ in Float(rng.nextDouble()) }
            var expected = start
            for r in 0..<rows { for j in 0..<cols { expected[r * cols + j] += w[j * V + Int(tokens[r])] } }
            var table = [Float](repeating: .nan, count: V * cols)  // stale contents must not matter
            for useTable in [true, false] {
                var out = start
                table.withUnsafeMutableBufferPointer { t in
                    Float.gatherColumns(w, ldw: V, cols: cols, tokens: tokens, rows: rows, into: &out, table: useTable ? t.baseAddress : nil, filled: false)
                }
                XCTAssertEqual(out.map(\.bitPattern), expected.map(\.bitPattern), "gather V=\(V) cols=\(cols) table=\(useTable)")
                // Row by row (as the forward gathers step by step), the table filled by the first
                // call only: the same bits.
                var byRow = start
                table.withUnsafeMutableBufferPointer { t in
                    if useTable { t.update(repeating: .nan) }
                    byRow.withUnsafeMutableBufferPointer { o in
                        tokens.withUnsafeBufferPointer { tk in
                            for r in 0..<rows {
                                Float.gatherColumns(w, ldw: V, cols: cols, tokens: tk.baseAddress! + r, rows: 1,
                                                    into: o.baseAddress! + r * cols, table: useTable ? t.baseAddress : nil, filled: r > 0)
                            }
                        }
                    }
                }
                XCTAssertEqual(byRow.map(\.bitPattern), expected.map(\.bitPattern), "gather by row, V=\(V) cols=\(cols) table=\(useTable)")
                for initial in [Float(0), 0.25] {
                    var sum = [Double](repeating: 0, count: cols * V), direct = [Float](repeating: initial, count: cols * V)
                    for r in 0..<rows {
                        for j in 0..<cols {
                            sum[j * V + Int(tokens[r])] += Double(d[r * cols + j])
                            direct[j * V + Int(tokens[r])] += d[r * cols + j]
                        }
                    }
                    var dw = [Float](repeating: initial, count: cols * V)
                    table.withUnsafeMutableBufferPointer { t in
                        Float.scatterAddColumns(d, rows: rows, cols: cols, tokens: tokens, into: &dw, ldw: V, table: useTable ? t.baseAddress : nil)
                    }
                    if initial == 0 || !useTable {
                        XCTAssertEqual(dw.map(\.bitPattern), direct.map(\.bitPattern), "scatter V=\(V) cols=\(cols) table=\(useTable) initial=\(initial)")
                    } else {
                        for e in 0..<dw.count {
                            XCTAssertEqual(Double(dw[e]), Double(initial) + sum[e], accuracy: 1e-5, "scatter V=\(V) element \(e)")
                        }
                    }
                }
                table = [Float](repeating: .nan, count: V * cols)
            }
        }
    }
}
