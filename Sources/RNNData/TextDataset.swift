import Foundation
import RNN

/// The characters (Unicode scalars) of the training text, sorted; a token is an index into it.
public struct Vocabulary: Equatable, Sendable {
    public let characters: [Unicode.Scalar]
    private let index: [Unicode.Scalar: Int32]

    public init(characters: [Unicode.Scalar]) {
        self.characters = characters
        var idx: [Unicode.Scalar: Int32] = [:]
        for (i, c) in characters.enumerated() { idx[c] = Int32(i) }
        index = idx
    }
    public var count: Int { characters.count }
    public func token(_ c: Unicode.Scalar) -> Int32? { index[c] }
    public func decode(_ tokens: [Int32]) -> String {
        var s = String.UnicodeScalarView()
        for t in tokens { s.append(characters[Int(t)]) }
        return String(s)
    }
    public static func == (a: Vocabulary, b: Vocabulary) -> Bool { a.characters == b.characters }
}

/// Character-level language modelling. The file's first (1 - validation_fraction) of characters
/// train, the rest validate; the vocabulary is the training part's set of characters. A training
/// sample is a random window of T + 1 characters: inputs x_0..x_{T-1}, targets x_1..x_T (every_step)
/// or x_T (last_step). Validation samples are consecutive non-overlapping windows of the
/// validation part, at most `maxValidation` of them. Validation characters that never occur in
/// the training part are dropped (counted in `droppedValidationCharacters`).
public final class TextDataset: Dataset {
    public let vocabulary: Vocabulary
    public let train: [Int32]
    public let validation: [Int32]
    public let steps: Int
    public let output: OutputMode
    public let seed: UInt64
    public let droppedValidationCharacters: Int
    /// Up to five distinct characters among the dropped ones.
    public let droppedExamples: [Unicode.Scalar]
    public let validationCount: Int
    let path: String

    /// - vocabulary: a model's own vocabulary (evaluating a trained model); nil: the training
    ///   part's characters. Characters outside it are dropped from both parts.
    public init(path: String, validationFraction: Double, steps: Int, output: OutputMode, seed: UInt64,
                maxValidation: Int, vocabulary given: Vocabulary? = nil) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw DataError(FileManager.default.fileExists(atPath: path)
                ? "\(path): cannot read the file" : "\(path): no such file")
        }
        guard let text = String(data: data, encoding: .utf8) else { throw DataError("\(path): not valid UTF-8 text") }
        let scalars = Array(text.unicodeScalars)
        let trainCount = Int((Double(scalars.count) * (1 - validationFraction)).rounded(.down))
        let trainPart = scalars[0..<trainCount]
        guard trainCount >= steps + 1 else {
            throw DataError("\(path): the training part has \(trainCount) characters, fewer than sequence_length + 1 = \(steps + 1)")
        }
        let vocab = given ?? Vocabulary(characters: Set(trainPart).sorted { $0.value < $1.value })
        self.vocabulary = vocab
        self.train = trainPart.compactMap { vocab.token($0) }
        var dropped = 0
        var examples: [Unicode.Scalar] = []
        var val: [Int32] = []
        val.reserveCapacity(scalars.count - trainCount)
        for c in scalars[trainCount...] {
            if let t = vocab.token(c) { val.append(t) } else {
                dropped += 1
                if examples.count < 5 && !examples.contains(c) { examples.append(c) }
            }
        }
        self.validation = val
        self.droppedValidationCharacters = dropped
        self.droppedExamples = examples
        self.steps = steps
        self.output = output
        self.seed = seed
        self.path = path
        self.validationCount = val.count > steps ? min(maxValidation, (val.count - 1) / steps) : 0
    }

    public var summary: String {
        "text \(path): \(train.count) training and \(validation.count) validation characters, vocabulary \(vocabulary.count)"
    }
    public var input: InputKind { .tokens(vocabulary: vocabulary.count) }
    public var outputSize: Int { vocabulary.count }

    public func trainingBatch(step: Int, globalBatch: Int, rows: Range<Int>) -> Batch {
        var batch = Batch(batchSize: 0, steps: 0)
        fillTrainingBatch(&batch, step: step, globalBatch: globalBatch, rows: rows)
        return batch
    }

    /// Window starts of the current batch's rows: scratch reused from step to step.
    private var starts: [Int] = []

    public func fillTrainingBatch(_ batch: inout Batch, step: Int, globalBatch: Int, rows: Range<Int>) {
        windowStarts(seed: seed, step: step, rows: rows, windows: train.count - steps, into: &starts)
        fill(&batch, source: train, starts: starts)
    }

    public func validationBatch(_ samples: Range<Int>) -> Batch {
        var batch = Batch(batchSize: 0, steps: 0)
        fill(&batch, source: validation, starts: samples.map { $0 * steps })
        return batch
    }

    // MARK: stateful streams (training.stateful)

    /// Stateful streams: the training text cut into B equal streams, stream b being characters
    /// [b*L, (b+1)*L) with L = train.count / B. Step s (0-based) reads chunk s mod P of every
    /// stream, chunk c being characters [c*T, c*T + T] of the stream, so consecutive steps read
    /// consecutive text and the hidden state can be carried from step to step. P = (L - 1) / T
    /// chunks per pass; the state restarts with every pass.
    public func streamChunks(globalBatch B: Int) -> Int { (train.count / B - 1) / steps }

    /// True when step `step` starts a new pass over the streams (the carried state is reset).
    public func streamRestarts(step: Int, globalBatch B: Int) -> Bool { step % max(streamChunks(globalBatch: B), 1) == 0 }

    /// Rows `rows` of the global batch of step `step` in stateful-stream order, written into
    /// `batch`, reusing its arrays (see Dataset.fillTrainingBatch).
    public func fillStreamBatch(_ batch: inout Batch, step: Int, globalBatch B: Int, rows: Range<Int>) {
        let L = train.count / B, chunk = step % max(streamChunks(globalBatch: B), 1)
        if starts.count != rows.count { starts = [Int](repeating: 0, count: rows.count) }
        for (i, r) in rows.enumerated() { starts[i] = r * L + chunk * steps }
        fill(&batch, source: train, starts: starts)
    }

    /// Tokens (T, B) and targets (T, B) or (B) of the windows at `starts`, in place: an array
    /// is reallocated only when its size changes.
    private func fill(_ batch: inout Batch, source: [Int32], starts: [Int]) {
        let B = starts.count, T = steps
        let targetRows = output == .everyStep ? T : 1
        batch.batchSize = B
        batch.steps = T
        if batch.tokens.count != T * B { batch.tokens = [Int32](repeating: 0, count: T * B) }
        if batch.targetClasses.count != targetRows * B { batch.targetClasses = [Int32](repeating: 0, count: targetRows * B) }
        if !batch.features.isEmpty { batch.features = [] }
        if !batch.targetValues.isEmpty { batch.targetValues = [] }
        source.withUnsafeBufferPointer { src in
            batch.tokens.withUnsafeMutableBufferPointer { tok in
                for t in 0..<T { for b in 0..<B { tok[t * B + b] = src[starts[b] + t] } }
            }
            batch.targetClasses.withUnsafeMutableBufferPointer { tgt in
                if output == .everyStep {
                    for t in 0..<T { for b in 0..<B { tgt[t * B + b] = src[starts[b] + t + 1] } }
                } else {
                    for b in 0..<B { tgt[b] = src[starts[b] + T] }
                }
            }
        }
    }
}
