/// One (local) batch, time-major: element (t, b) of a (T, B, ...) array sits at t * B + b.
///
/// Exactly one of `tokens` / `features` is filled, matching the model's InputKind, and exactly one
/// of `targetClasses` / `targetValues`, matching its loss. Targets have T rows of B for
/// every_step output and one row of B for last_step output.
public struct Batch: Sendable {
    /// B: samples in this batch (this rank's rows of the global batch).
    public var batchSize: Int
    /// T: time steps.
    public var steps: Int
    public var tokens: [Int32]  // (T, B) token ids, when the input is tokens
    public var features: [Float]  // (T, B, I) when the input is dense
    public var targetClasses: [Int32]  // (T, B) or (B): class ids for cross-entropy
    public var targetValues: [Float]  // (T, B, O) or (B, O): values for MSE

    public init(batchSize: Int, steps: Int, tokens: [Int32] = [], features: [Float] = [],
                targetClasses: [Int32] = [], targetValues: [Float] = []) {
        self.batchSize = batchSize
        self.steps = steps
        self.tokens = tokens
        self.features = features
        self.targetClasses = targetClasses
        self.targetValues = targetValues
    }
}

/// Sums over the loss terms of a batch (a term is one (sample, step) for every_step output and
/// one sample for last_step output). Summed across ranks, then divided, so means are exact.
public struct LossStats: Equatable, Sendable {
    public var sum: Double = 0
    public var count: Int = 0
    /// Terms whose arg-max prediction equals the target (cross-entropy only).
    public var correct: Int = 0
    public init(sum: Double = 0, count: Int = 0, correct: Int = 0) {
        self.sum = sum
        self.count = count
        self.correct = correct
    }
    public var mean: Double { count > 0 ? sum / Double(count) : .nan }
    public static func += (a: inout LossStats, b: LossStats) {
        a.sum += b.sum
        a.count += b.count
        a.correct += b.correct
    }
}

extension Batch {
    /// Steps `range` of this batch (all samples): inputs, and per-step targets when `everyStep`
    /// (a last-step batch keeps its targets only in the slice that ends at the last step).
    public func timeSlice(_ range: Range<Int>, everyStep: Bool, inputWidth: Int, outputWidth: Int) -> Batch {
        let B = batchSize
        var out = Batch(batchSize: B, steps: range.count)
        if !tokens.isEmpty { out.tokens = Array(tokens[(range.lowerBound * B)..<(range.upperBound * B)]) }
        if !features.isEmpty { out.features = Array(features[(range.lowerBound * B * inputWidth)..<(range.upperBound * B * inputWidth)]) }
        if everyStep {
            if !targetClasses.isEmpty { out.targetClasses = Array(targetClasses[(range.lowerBound * B)..<(range.upperBound * B)]) }
            if !targetValues.isEmpty {
                out.targetValues = Array(targetValues[(range.lowerBound * B * outputWidth)..<(range.upperBound * B * outputWidth)])
            }
        } else {
            out.targetClasses = targetClasses
            out.targetValues = targetValues
        }
        return out
    }
}
