/// xoshiro256** (Blackman & Vigna, 2018), seeded through SplitMix64: a small, fast generator whose
/// whole state is four words, so it is identical on every rank and can be saved and restored.
public struct Xoshiro256: RandomNumberGenerator, Equatable, Sendable {
    public var state: (UInt64, UInt64, UInt64, UInt64)

    public init(seed: UInt64) {
        var sm = seed
        func splitmix() -> UInt64 {
            sm &+= 0x9E37_79B9_7F4A_7C15
            var z = sm
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        state = (splitmix(), splitmix(), splitmix(), splitmix())
    }

    /// A generator for one named stream of a run: the same (seed, stream, index) gives the same
    /// numbers on every rank and for every number of ranks.
    public init(seed: UInt64, stream: UInt64, index: UInt64 = 0) {
        self.init(seed: Xoshiro256.mix(seed, stream, index))
    }

    public static func mix(_ a: UInt64, _ b: UInt64, _ c: UInt64) -> UInt64 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for v in [a, b, c] {
            h ^= v
            h = (h ^ (h >> 29)) &* 0xBF58_476D_1CE4_E5B9
            h = (h ^ (h >> 32)) &* 0x94D0_49BB_1331_11EB
        }
        return h
    }

    @inline(__always)
    public mutating func next() -> UInt64 {
        let result = rotl(state.1 &* 5, 7) &* 9
        let t = state.1 << 17
        state.2 ^= state.0
        state.3 ^= state.1
        state.1 ^= state.2
        state.0 ^= state.3
        state.2 ^= t
        state.3 = rotl(state.3, 45)
        return result
    }

    @inline(__always) private func rotl(_ x: UInt64, _ k: UInt64) -> UInt64 { (x << k) | (x >> (64 - k)) }

    /// Uniform in [0, 1) with 24 random bits (exactly representable as Float).
    public mutating func nextUniform() -> Float { Float(next() >> 40) * 0x1p-24 }
    /// Uniform in [0, 1) with 53 random bits.
    public mutating func nextDouble() -> Double { Double(next() >> 11) * 0x1p-53 }
    /// Uniform integer in 0..<n (Lemire's method via the standard library).
    public mutating func nextInt(below n: Int) -> Int { Int.random(in: 0..<n, using: &self) }

    public static func == (a: Xoshiro256, b: Xoshiro256) -> Bool {
        a.state.0 == b.state.0 && a.state.1 == b.state.1 && a.state.2 == b.state.2 && a.state.3 == b.state.3
    }
}

/// Named streams, so that adding a consumer of randomness never shifts another's numbers.
public enum RandomStream: UInt64 {
    case parameters = 1
    case trainingData = 2
    case validationData = 3
    case sampling = 4
    /// The order of length-bucketed batches within an epoch.
    case batchOrder = 5
}
