import RNN

/// A source of training and validation batches. Sample order is a pure function of
/// (seed, step, global row): rank r of N asks for its rows of the same global batch, so the union
/// of all shards at a step does not depend on N, and resuming at step k needs only k.
public protocol Dataset {
    /// One line for the start-up banner.
    var summary: String { get }
    var input: InputKind { get }
    /// O: width of the model's head.
    var outputSize: Int { get }
    /// T: time steps per sample.
    var steps: Int { get }
    /// Rows `rows` of the global training batch (of `globalBatch` rows) for `step`.
    func trainingBatch(step: Int, globalBatch: Int, rows: Range<Int>) -> Batch
    /// The same batch written into `batch`, reusing its arrays when their sizes fit, so that the
    /// training loop's steps allocate nothing. The default builds a new batch.
    func fillTrainingBatch(_ batch: inout Batch, step: Int, globalBatch: Int, rows: Range<Int>)
    /// Number of fixed validation samples (0: no validation).
    var validationCount: Int { get }
    /// Validation samples with the given indices, in order.
    func validationBatch(_ samples: Range<Int>) -> Batch
}

extension Dataset {
    public func fillTrainingBatch(_ batch: inout Batch, step: Int, globalBatch: Int, rows: Range<Int>) {
        batch = trainingBatch(step: step, globalBatch: globalBatch, rows: rows)
    }
}

public struct DataError: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// The window starts of global rows `rows` of one global batch, into `starts` (resized only when
/// its count differs): the start of global row i at `step` is uniform in 0..<windows, drawn in row
/// order from one generator every rank runs identically, so any split of the rows gives the same
/// starts.
func windowStarts(seed: UInt64, step: Int, rows: Range<Int>, windows: Int, into starts: inout [Int]) {
    var rng = Xoshiro256(seed: seed, stream: RandomStream.trainingData.rawValue, index: UInt64(step))
    if starts.count != rows.count { starts = [Int](repeating: 0, count: rows.count) }
    for i in 0..<rows.upperBound {
        let s = rng.nextInt(below: windows)
        if i >= rows.lowerBound { starts[i - rows.lowerBound] = s }
    }
}

/// Builds a time-major batch from per-sample sequences.
/// - sample(b) returns (inputs (T) tokens or (T*I) features, targets).
struct BatchBuilder {
    let T: Int
    let B: Int
    var batch: Batch

    init(steps: Int, batchSize: Int) {
        T = steps
        B = batchSize
        batch = Batch(batchSize: batchSize, steps: steps)
    }

    mutating func setTokens(_ tokens: (_ b: Int, _ t: Int) -> Int32) {
        batch.tokens = [Int32](repeating: 0, count: T * B)
        for t in 0..<T { for b in 0..<B { batch.tokens[t * B + b] = tokens(b, t) } }
    }
    mutating func setFeatures(width: Int, _ value: (_ b: Int, _ t: Int, _ i: Int) -> Float) {
        batch.features = [Float](repeating: 0, count: T * B * width)
        for t in 0..<T { for b in 0..<B { for i in 0..<width { batch.features[(t * B + b) * width + i] = value(b, t, i) } } }
    }
    mutating func setClassTargets(rows: Int, _ cls: (_ b: Int, _ t: Int) -> Int32) {
        batch.targetClasses = [Int32](repeating: 0, count: rows * B)
        for r in 0..<rows { for b in 0..<B { batch.targetClasses[r * B + b] = cls(b, r) } }
    }
    mutating func setValueTargets(rows: Int, width: Int, _ value: (_ b: Int, _ t: Int, _ o: Int) -> Float) {
        batch.targetValues = [Float](repeating: 0, count: rows * B * width)
        for r in 0..<rows { for b in 0..<B { for o in 0..<width { batch.targetValues[(r * B + b) * width + o] = value(b, r, o) } } }
    }
}
