import RNN

/// The adding problem (Hochreiter & Schmidhuber 1997; Le, Jaitly & Hinton 2015): each step has two
/// channels, a value in U(0, 1) and a marker that is 1 at exactly two steps (one in each half of
/// the sequence) and 0 elsewhere; the target is the sum of the two marked values. Predicting the
/// constant 1 scores MSE = Var(U + U') = 1/6 ~ 0.167, the baseline a model must beat.
///
/// Sample i of training step s is generated from its own generator seeded by (seed, s, i), so any
/// rank can make any row without the others; validation sample j from (seed, j).
public final class AddingProblem: Dataset {
    public let steps: Int
    public let seed: UInt64
    public let validationCount: Int

    public init(length: Int, seed: UInt64, validationSamples: Int) throws {
        guard length >= 2 else { throw DataError("the adding problem needs data.length >= 2, got \(length)") }
        steps = length
        self.seed = seed
        validationCount = validationSamples
    }

    public var summary: String { "synthetic adding problem, length \(steps), baseline MSE 0.167" }
    public var input: InputKind { .dense(features: 2) }
    public var outputSize: Int { 1 }

    /// (values (T), marker positions, target) of one sample.
    func sample(_ rng: inout Xoshiro256) -> (values: [Float], first: Int, second: Int, target: Float) {
        let values = (0..<steps).map { _ in rng.nextUniform() }
        let half = steps / 2
        let first = rng.nextInt(below: half)
        let second = half + rng.nextInt(below: steps - half)
        return (values, first, second, values[first] + values[second])
    }

    public func trainingBatch(step: Int, globalBatch: Int, rows: Range<Int>) -> Batch {
        make(rows.map { Xoshiro256(seed: seed, stream: RandomStream.trainingData.rawValue, index: UInt64(step) << 32 | UInt64($0)) })
    }

    public func validationBatch(_ samples: Range<Int>) -> Batch {
        make(samples.map { Xoshiro256(seed: seed, stream: RandomStream.validationData.rawValue, index: UInt64($0)) })
    }

    private func make(_ generators: [Xoshiro256]) -> Batch {
        let samples = generators.map { g -> (values: [Float], first: Int, second: Int, target: Float) in
            var g = g
            return sample(&g)
        }
        var bb = BatchBuilder(steps: steps, batchSize: samples.count)
        bb.setFeatures(width: 2) { b, t, i in
            i == 0 ? samples[b].values[t] : (t == samples[b].first || t == samples[b].second ? 1 : 0)
        }
        bb.setValueTargets(rows: 1, width: 1) { b, _, _ in samples[b].target }
        return bb.batch
    }
}
