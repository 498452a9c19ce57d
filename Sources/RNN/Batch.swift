/// One (local) batch, time-major: element (t, b) of a (T, B, ...) array sits at t * B + b.
///
/// Exactly one of `tokens` / `features` is filled, matching the model's InputKind, and exactly one
/// of `targetClasses` / `targetValues`, matching its loss. Targets have T rows of B for
/// every_step output and one row of B for last_step output.
///
/// Sequences of different lengths (`lengths` set) use the packed layout of PyTorch's
/// PackedSequence instead: the samples sorted longest first, step t holds rows only for the B_t
/// samples longer than t (samples 0..<B_t), and its rows follow step t-1's. Every per-step array
/// then has sum(lengths) rows where the padded one has T*B, and nothing is stored, read or
/// computed for padding. With equal lengths the two layouts are the same.
public struct Batch: Sendable {
    /// B: samples in this batch (this rank's rows of the global batch).
    public var batchSize: Int
    /// T: time steps.
    public var steps: Int
    public var tokens: [Int32]  // (T, B) token ids, when the input is tokens
    public var features: [Float]  // (T, B, I) when the input is dense
    public var targetClasses: [Int32]  // (T, B) or (B): class ids for cross-entropy
    public var targetValues: [Float]  // (T, B, O) or (B, O): values for MSE
    /// (B): each sample's time steps, nonincreasing, the first equal to `steps`; empty: all `steps`.
    public var lengths: [Int32] = []
    /// (B): the identity of each sample in its global batch, which dropout's masks are a function
    /// of; empty: the row offset of the pass plus b.
    public var rowKeys: [Int] = []

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
    /// Time steps computed: the samples' lengths summed (T*B for equal lengths), which averaging
    /// over time divides by.
    public var steps: Int = 0
    public init(sum: Double = 0, count: Int = 0, correct: Int = 0, steps: Int = 0) {
        self.sum = sum
        self.count = count
        self.correct = correct
        self.steps = steps
    }
    public var mean: Double { count > 0 ? sum / Double(count) : .nan }
    public static func += (a: inout LossStats, b: LossStats) {
        a.sum += b.sum
        a.count += b.count
        a.correct += b.correct
        a.steps += b.steps
    }
}

extension Batch {
    /// Whether the samples' lengths differ (the packed layout is not the padded one).
    public var isRagged: Bool { !lengths.isEmpty && Int(lengths.last!) != steps }

    /// Time steps of all samples together: sum(lengths), or T*B.
    public var validSteps: Int { lengths.isEmpty ? steps * batchSize : lengths.reduce(0) { $0 + Int($1) } }

    /// The indices of `lengths` ordered longest first, ties in index order (the order of a packed
    /// batch's samples).
    public static func longestFirst(_ lengths: [Int]) -> [Int] {
        (0..<lengths.count).sorted { lengths[$0] != lengths[$1] ? lengths[$0] > lengths[$1] : $0 < $1 }
    }

    /// The packed batch of padded time-major arrays (T, B, ...) whose samples have `lengths`, in
    /// any order, each in 1...T: samples sorted longest first (ties keep their order), padding
    /// dropped; T becomes the longest length. Returns it and `order`: its sample i is sample
    /// order[i] of the padded arrays. Per-step targets when `everyStep`, else (B) or (B, O).
    public static func packing(lengths: [Int], steps T: Int, tokens: [Int32] = [], features: [Float] = [], featureWidth I: Int = 0,
                               targetClasses: [Int32] = [], targetValues: [Float] = [], targetWidth O: Int = 0,
                               everyStep: Bool) -> (batch: Batch, order: [Int]) {
        let B = lengths.count
        precondition(lengths.allSatisfy { $0 >= 1 && $0 <= T }, "lengths must be in 1...T")
        let order = longestFirst(lengths)
        let longest = lengths[order[0]]
        var out = Batch(batchSize: B, steps: longest)
        out.lengths = order.map { Int32(lengths[$0]) }
        // The padded (t, b) of every packed row, in packed order.
        var cells: [(t: Int, b: Int)] = []
        for t in 0..<longest { for i in 0..<B where lengths[order[i]] > t { cells.append((t, order[i])) } }
        if !tokens.isEmpty { out.tokens = cells.map { tokens[$0.t * B + $0.b] } }
        if !features.isEmpty { out.features = cells.flatMap { c in features[((c.t * B + c.b) * I)..<((c.t * B + c.b + 1) * I)] } }
        if everyStep {
            if !targetClasses.isEmpty { out.targetClasses = cells.map { targetClasses[$0.t * B + $0.b] } }
            if !targetValues.isEmpty { out.targetValues = cells.flatMap { c in targetValues[((c.t * B + c.b) * O)..<((c.t * B + c.b + 1) * O)] } }
        } else {
            if !targetClasses.isEmpty { out.targetClasses = order.map { targetClasses[$0] } }
            if !targetValues.isEmpty { out.targetValues = order.flatMap { b in targetValues[(b * O)..<((b + 1) * O)] } }
        }
        return (out, order)
    }

    /// Steps `range` of this batch (all samples): inputs, and per-step targets when `everyStep`
    /// (a last-step batch keeps its targets only in the slice that ends at the last step).
    public func timeSlice(_ range: Range<Int>, everyStep: Bool, inputWidth: Int, outputWidth: Int) -> Batch {
        precondition(!isRagged, "truncated BPTT needs sequences of one length")
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
