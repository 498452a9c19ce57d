// The Float kernels of the cells, written with SIMD8<Float> so that they run 8 lanes wide
// (one AVX2 register) whatever the auto-vectorizer decides. The scalar kernels in Kernels.swift
// stay the reference: Double uses them for the gradient checks, and
// Tests/RNNTests/VectorKernelTests.swift checks these against them for every width 1...19, so
// tails shorter than 8 lanes are covered.
//
// A row of H values is processed in chunks of 8; the last chunk of a row, when H is not a multiple
// of 8, is loaded into a zero-padded vector and only its valid lanes are stored back. Every element
// therefore goes through the same instructions, and FastMath's SIMD functions give bit-for-bit the
// results of its scalar ones (tested), so vector width never changes a result.

public typealias Float8 = SIMD8<Float>

extension FastMath {
    @_transparent
    @usableFromInline static func bits(_ x: Float8) -> SIMD8<UInt32> { unsafeBitCast(x, to: SIMD8<UInt32>.self) }
    @_transparent
    @usableFromInline static func float(_ x: SIMD8<UInt32>) -> Float8 { unsafeBitCast(x, to: Float8.self) }

    /// exp, 8 lanes; the same operations, in the same order, as the scalar FastMath.exp.
    @_transparent
    public static func exp(_ x: Float8) -> Float8 {
        let lo = Float8(repeating: -87.33654), hi = Float8(repeating: 88.37626)
        var xc = x.replacing(with: lo, where: x .< lo)  // NaN compares false and passes through
        xc = xc.replacing(with: hi, where: xc .> hi)
        let magic = Float8(repeating: 12_582_912)
        let (t, p) = expCore(xc, magic: magic)
        let scale = float((bits(t) &- (12_582_912 as Float).bitPattern &+ 127) &<< 23)
        let y = p * scale
        return y.replacing(with: 0, where: x .< lo)
    }

    /// tanh, 8 lanes; the same operations as the scalar FastMath.tanh.
    @_transparent
    public static func tanh(_ x: Float8) -> Float8 {
        let a = float(bits(x) & 0x7fff_ffff)
        let z = x * x
        var s = Float8(repeating: -5.704_988_727_45e-3)
        s = .madd(s, z, .splat(2.063_908_879_54e-2))
        s = .madd(s, z, .splat(-5.373_971_555_31e-2))
        s = .madd(s, z, .splat(1.333_144_220_36e-1))
        s = .madd(s, z, .splat(-3.333_328_194_22e-1))
        let small = Float8.madd(s * z, x, x)
        let twoA = 2 * a
        let e = exp(twoA.replacing(with: 88, where: twoA .> 88))
        let large = 1 - 2 / (e + 1)
        var y = large.replacing(with: -large, where: x .< 0)
        y = y.replacing(with: x, where: x .!= x)  // NaN
        return y.replacing(with: small, where: a .< 0.625)
    }

    @_transparent
    public static func sigmoid(_ x: Float8) -> Float8 { 1 / (1 + exp(-x)) }
}

/// Loads and stores of up to 8 floats. A full chunk is one unaligned vector move; a partial one
/// (the tail of a row) goes lane by lane and leaves the other lanes zero.
@usableFromInline struct Lanes {
    @usableFromInline let n: Int
    @inline(__always) init(_ n: Int) { self.n = n }

    @inline(__always) func load(_ p: UnsafePointer<Float>) -> Float8 {
        if n == 8 { return UnsafeRawPointer(p).loadUnaligned(as: Float8.self) }
        var v = Float8()
        for i in 0..<n { v[i] = p[i] }
        return v
    }
    @inline(__always) func load(_ p: UnsafeMutablePointer<Float>) -> Float8 { load(UnsafePointer(p)) }

    @inline(__always) func store(_ v: Float8, _ p: UnsafeMutablePointer<Float>) {
        if n == 8 { UnsafeMutableRawPointer(p).storeBytes(of: v, as: Float8.self); return }
        for i in 0..<n { p[i] = v[i] }
    }
}

enum VectorKernels {
    static func activationForward(_ act: Activation, _ slope: Float, _ z: UnsafeMutablePointer<Float>, _ n: Int) {
        switch act {
        case .tanh:
            var j = 0
            while j < n { let l = Lanes(Swift.min(8, n &- j)); l.store(FastMath.tanh(l.load(z + j)), z + j); j &+= 8 }
        case .sigmoid:
            var j = 0
            while j < n { let l = Lanes(Swift.min(8, n &- j)); l.store(FastMath.sigmoid(l.load(z + j)), z + j); j &+= 8 }
        case .relu, .leakyRelu: Kernels.activationForward(act, slope, z, n)  // auto-vectorized
        }
    }

    /// Kernels.softmaxCrossEntropy, 8 lanes at a time: per row the max, exp(z - max) stored back,
    /// their sum, then the gradient scale * (p - onehot(t)) in place. Full chunks of 8 go through
    /// the vector unit and the tail of a row (classes % 8 values) through the scalar FastMath.exp,
    /// which gives the same bits, so no padding lane can leak into the max or the sum. The sum is
    /// 8 running lane sums folded in a fixed order, then the tail, so it depends only on the row:
    /// the same on every rank count, as reproducible mode requires. The argmax is the first index
    /// holding the max, as in the scalar reference (its first strictly greater value).
    static func softmaxCrossEntropy(_ logits: UnsafeMutablePointer<Float>, _ rows: Int, _ classes: Int,
                                    _ targets: UnsafePointer<Int32>, _ scale: Float) -> (loss: Double, correct: Int) {
        let full = classes & ~7, l = Lanes(8)
        var loss = 0.0
        var correct = 0
        for r in 0..<rows {
            let z = logits + r &* classes
            var m8 = Float8(repeating: -.infinity)
            var j = 0
            while j < full {
                let v = l.load(z + j)
                m8 = m8.replacing(with: v, where: v .> m8)
                j &+= 8
            }
            var mx = Swift.max(Swift.max(Swift.max(m8[0], m8[1]), Swift.max(m8[2], m8[3])),
                               Swift.max(Swift.max(m8[4], m8[5]), Swift.max(m8[6], m8[7])))
            for k in full..<classes where z[k] > mx { mx = z[k] }
            var arg = 0
            for k in 0..<classes where z[k] == mx { arg = k; break }
            let t = Int(targets[r])
            let shifted = z[t] - mx  // log of the target's unnormalized probability
            let mx8 = Float8(repeating: mx)
            var s8 = Float8()
            j = 0
            while j < full {
                let e = FastMath.exp(l.load(z + j) - mx8)
                l.store(e, z + j)
                s8 += e
                j &+= 8
            }
            var sum = ((s8[0] + s8[4]) + (s8[2] + s8[6])) + ((s8[1] + s8[5]) + (s8[3] + s8[7]))
            for k in full..<classes { let e = FastMath.exp(z[k] - mx); z[k] = e; sum += e }
            if arg == t { correct += 1 }
            // -log p_t = log(sum) - (z_t - max): finite even when exp(z_t - max) underflows.
            loss += Double(Float.logf(sum)) - Double(shifted)
            let inv = scale / sum
            let inv8 = Float8(repeating: inv)
            j = 0
            while j < full {
                let v = l.load(z + j) * inv8
                l.store(v, z + j)
                j &+= 8
            }
            for k in full..<classes { z[k] *= inv }
            z[t] -= scale
        }
        return (loss, correct)
    }

    /// Kernels.adamUpdate, 8 parameters at a time; the tail through the scalar kernel. Every
    /// operation (+, -, *, /, sqrt) is correctly rounded in either, so the bits are the same.
    static func adamUpdate(_ n: Int, _ p: UnsafeMutablePointer<Float>, _ g: UnsafePointer<Float>, _ m: UnsafeMutablePointer<Float>,
                           _ v: UnsafeMutablePointer<Float>, _ c: AdamCoefficients<Float>) {
        let w1 = Float8(repeating: c.w1), b2 = Float8(repeating: c.b2), w2 = Float8(repeating: c.w2)
        let eps = Float8(repeating: c.eps), bc2Sqrt = Float8(repeating: c.bc2Sqrt), stepSize = Float8(repeating: c.stepSize)
        let full = n & ~7, l = Lanes(8)
        var i = 0
        while i < full {
            let gi = l.load(g + i), m0 = l.load(m + i)
            let mi = m0 + w1 * (gi - m0)
            let vi = l.load(v + i) * b2 + w2 * gi * gi
            let denom = vi.squareRoot() / bc2Sqrt + eps
            l.store(mi, m + i)
            l.store(vi, v + i)
            l.store(l.load(p + i) - stepSize * (mi / denom), p + i)
            i &+= 8
        }
        Kernels.adamUpdate(n &- full, p + full, g + full, m + full, v + full, c)
    }

    /// Kernels.lstmForward, 8 lanes at a time.
    static func lstmForward(_ gates: UnsafeMutablePointer<Float>, _ cPrev: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>,
                            _ h: UnsafeMutablePointer<Float>, _ rows: Int, _ H: Int) {
        for b in 0..<rows {
            let zi = gates + b &* 4 &* H, zf = zi + H, zg = zf + H, zo = zg + H
            let cp = cPrev + b &* H, cb = c + b &* H, hb = h + b &* H
            var j = 0
            while j < H {
                let l = Lanes(Swift.min(8, H &- j))
                defer { j &+= 8 }
                let i = FastMath.sigmoid(l.load(zi + j)), f = FastMath.sigmoid(l.load(zf + j))
                let g = FastMath.tanh(l.load(zg + j)), o = FastMath.sigmoid(l.load(zo + j))
                l.store(i, zi + j); l.store(f, zf + j); l.store(g, zg + j); l.store(o, zo + j)
                let cj = f * l.load(cp + j) + i * g
                l.store(cj, cb + j)
                l.store(o * FastMath.tanh(cj), hb + j)
            }
        }
    }

    /// Kernels.lstmBackward, 8 lanes at a time.
    static func lstmBackward(_ dh: UnsafePointer<Float>, _ dc: UnsafeMutablePointer<Float>, _ gates: UnsafePointer<Float>,
                             _ c: UnsafePointer<Float>, _ cPrev: UnsafePointer<Float>, _ dz: UnsafeMutablePointer<Float>,
                             _ rows: Int, _ H: Int) {
        for b in 0..<rows {
            let ai = gates + b &* 4 &* H, af = ai + H, ag = af + H, ao = ag + H
            let di = dz + b &* 4 &* H, df = di + H, dg = df + H, dO = dg + H
            let dhb = dh + b &* H, dcb = dc + b &* H, cb = c + b &* H, cp = cPrev + b &* H
            var j = 0
            while j < H {
                let l = Lanes(Swift.min(8, H &- j))
                defer { j &+= 8 }
                let i = l.load(ai + j), f = l.load(af + j), g = l.load(ag + j), o = l.load(ao + j)
                let dhj = l.load(dhb + j)
                let tc = FastMath.tanh(l.load(cb + j))
                let dC = l.load(dcb + j) + dhj * o * (1 - tc * tc)
                l.store(dC * g * i * (1 - i), di + j)
                l.store(dC * l.load(cp + j) * f * (1 - f), df + j)
                l.store(dC * i * (1 - g * g), dg + j)
                l.store(dhj * tc * o * (1 - o), dO + j)
                l.store(dC * f, dcb + j)
            }
        }
    }

    /// Kernels.gruForward, 8 lanes at a time.
    static func gruForward(_ gates: UnsafeMutablePointer<Float>, _ hh: UnsafePointer<Float>, _ hPrev: UnsafePointer<Float>,
                           _ h: UnsafeMutablePointer<Float>, _ hn: UnsafeMutablePointer<Float>, _ rows: Int, _ H: Int) {
        for b in 0..<rows {
            let xr = gates + b &* 3 &* H, xz = xr + H, xn = xz + H
            let ur = hh + b &* 3 &* H, uz = ur + H, un = uz + H
            let hp = hPrev + b &* H, hb = h + b &* H, hnb = hn + b &* H
            var j = 0
            while j < H {
                let l = Lanes(Swift.min(8, H &- j))
                defer { j &+= 8 }
                let r = FastMath.sigmoid(l.load(xr + j) + l.load(ur + j))
                let z = FastMath.sigmoid(l.load(xz + j) + l.load(uz + j))
                let u = l.load(un + j)
                let n = FastMath.tanh(l.load(xn + j) + r * u)
                l.store(r, xr + j); l.store(z, xz + j); l.store(n, xn + j)
                l.store(u, hnb + j)
                l.store((1 - z) * n + z * l.load(hp + j), hb + j)
            }
        }
    }

    /// Kernels.gruBackward, 8 lanes at a time.
    static func gruBackward(_ dh: UnsafePointer<Float>, _ gates: UnsafePointer<Float>, _ hn: UnsafePointer<Float>,
                            _ hPrev: UnsafePointer<Float>, _ dxi: UnsafeMutablePointer<Float>, _ dhh: UnsafeMutablePointer<Float>,
                            _ dhPrev: UnsafeMutablePointer<Float>, _ rows: Int, _ H: Int) {
        for b in 0..<rows {
            let ar = gates + b &* 3 &* H, az = ar + H, an = az + H
            let dxr = dxi + b &* 3 &* H, dxz = dxr + H, dxn = dxz + H
            let dur = dhh + b &* 3 &* H, duz = dur + H, dun = duz + H
            let dhb = dh + b &* H, hnb = hn + b &* H, hp = hPrev + b &* H, dhp = dhPrev + b &* H
            var j = 0
            while j < H {
                let l = Lanes(Swift.min(8, H &- j))
                defer { j &+= 8 }
                let r = l.load(ar + j), z = l.load(az + j), n = l.load(an + j)
                let d = l.load(dhb + j)
                let dn = d * (1 - z) * (1 - n * n)
                let dzv = d * (l.load(hp + j) - n) * z * (1 - z)
                let dr = dn * l.load(hnb + j) * r * (1 - r)
                l.store(dr, dxr + j); l.store(dzv, dxz + j); l.store(dn, dxn + j)
                l.store(dr, dur + j); l.store(dzv, duz + j); l.store(dn * r, dun + j)
                l.store(l.load(dhp + j) + d * z, dhp + j)
            }
        }
    }
}
