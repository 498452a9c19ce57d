// Float exp, tanh and sigmoid without calls into libm, so that the elementwise loops of the cells
// vectorize. Accuracy: within a few float32 ulps of the correctly rounded results over the whole
// range (Tests/RNNTests/FastMathTests.swift measures it against Double). Double keeps libm: it
// serves the gradient checks, where accuracy is the point.
//
// exp: Cody-Waite range reduction x = k ln2 + r, |r| <= ln2/2, then the degree-6 minimax
// polynomial of Cephes' expf (S. L. Moshier), and 2^k assembled in the exponent bits. k is
// extracted with the 1.5 * 2^23 rounding trick, so no float-to-int conversion can trap: NaN stays
// NaN, and arguments are clamped to where the result is finite or underflows to 0.
// tanh: Cephes' tanhf: an odd polynomial for |x| < 0.625, 1 - 2 / (e^{2|x|} + 1) beyond.
// Where the build targets FMA (RNN_DP_FMA, Package.swift), the reduction and the polynomials use
// fused multiply-adds (fewer instructions and one rounding each); elsewhere a multiply and an add.
// Scalar and 8-lane code take the same path, so they agree bit for bit in either build.

/// The arithmetic exp's reduction and polynomial need, for Float and SIMD8<Float>, so that the
/// scalar and the 8-lane exp are one piece of code (and give the same bits).
public protocol ExpLanes {
    static func + (a: Self, b: Self) -> Self
    static func - (a: Self, b: Self) -> Self
    static func * (a: Self, b: Self) -> Self
    static func splat(_ x: Float) -> Self
    /// a * b + c, fused where the build has FMA.
    static func madd(_ a: Self, _ b: Self, _ c: Self) -> Self
}

extension Float: ExpLanes {
    @_transparent public static func splat(_ x: Float) -> Float { x }
    @_transparent public static func madd(_ a: Float, _ b: Float, _ c: Float) -> Float {
        #if RNN_DP_FMA
        c.addingProduct(a, b)
        #else
        a * b + c
        #endif
    }
}

extension SIMD8: ExpLanes where Scalar == Float {
    @_transparent public static func splat(_ x: Float) -> SIMD8<Float> { SIMD8(repeating: x) }
    @_transparent public static func madd(_ a: SIMD8<Float>, _ b: SIMD8<Float>, _ c: SIMD8<Float>) -> SIMD8<Float> {
        #if RNN_DP_FMA
        c.addingProduct(a, b)
        #else
        a * b + c
        #endif
    }
}

public enum FastMath {
    /// Cody-Waite reduction of the clamped argument xc = k ln2 + r and the polynomial of e^r.
    /// Returns t (k + 1.5 * 2^23: k sits in its low mantissa bits) and p = e^r.
    @_transparent
    public static func expCore<V: ExpLanes>(_ xc: V, magic: V) -> (t: V, p: V) {
        let t = V.madd(xc, .splat(1.442_695_04), magic)
        let k = t - magic
        let r = V.madd(k, .splat(2.121_944_4e-4), V.madd(k, .splat(-0.693_359_375), xc))  // xc - k ln2, in two parts
        var p = V.splat(1.987_569_15e-4)
        p = V.madd(p, r, .splat(1.398_199_95e-3))
        p = V.madd(p, r, .splat(8.333_451_9e-3))
        p = V.madd(p, r, .splat(4.166_579_59e-2))
        p = V.madd(p, r, .splat(1.666_666_55e-1))
        p = V.madd(p, r, .splat(5.000_000_1e-1))
        p = V.madd(p, r * r, r) + .splat(1)
        return (t, p)
    }

    @inline(__always)
    public static func exp(_ x: Float) -> Float {
        let xc = Swift.min(Swift.max(x, -87.33654), 88.37626)  // NaN passes through both
        let magic: Float = 12_582_912  // 1.5 * 2^23: adding it rounds to an integer
        let (t, p) = expCore(xc, magic: magic)
        // The integer k sits in the low mantissa bits of t; 2^k = (k + 127) << 23.
        let bits = (t.bitPattern &- magic.bitPattern &+ 127) << 23
        let y = p * Float(bitPattern: bits)
        return x < -87.33654 ? 0 : y  // below the clamp the true value rounds to (nearly) 0
    }

    @inline(__always)
    public static func tanh(_ x: Float) -> Float {
        let a = Swift.abs(x)
        let z = x * x
        var s: Float = -5.704_988_727_45e-3
        s = Float.madd(s, z, 2.063_908_879_54e-2)
        s = Float.madd(s, z, -5.373_971_555_31e-2)
        s = Float.madd(s, z, 1.333_144_220_36e-1)
        s = Float.madd(s, z, -3.333_328_194_22e-1)
        let small = Float.madd(s * z, x, x)
        let e = exp(Swift.min(2 * a, 88))
        let large = 1 - 2 / (e + 1)
        let signed = x < 0 ? -large : large
        return a < 0.625 ? small : (x.isNaN ? x : signed)
    }

    @inline(__always)
    public static func sigmoid(_ x: Float) -> Float {
        // 1 / (1 + e^-x); for x < -87 e^-x saturates at the clamp and the result rounds to ~0.
        1 / (1 + exp(-x))
    }
}
