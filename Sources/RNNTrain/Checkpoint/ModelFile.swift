import Foundation
import RNN
import RNNData
import RNNDistributed

/// A trained model read back from a model.safetensors or a checkpoint: its config (from the
/// metadata), its network with the parameters loaded, and its data encoding.
public struct TrainedModel {
    public let path: String
    public let config: TrainConfig
    public let network: Network<Float>
    public let vocabulary: Vocabulary?
    public let normalization: (mean: Double, std: Double)?
    public let step: Int

    /// Reads and validates `path`; `overrides` change config keys (e.g. data.path) before the
    /// data is loaded. Errors name the file.
    public static func load(path: String, overrides: [String] = [], loadData: Bool = true) throws -> (TrainedModel, Dataset?) {
        let file: SafeTensors.File
        do { file = try Checkpoint.read(path: path) } catch let e as Checkpoint.Error { throw RNNDPError(e.message) }
        let config = try ConfigLoader.fromMetadata(file, name: path, overrides: overrides)
        let (vocabulary, normalization) = try ModelMetadata.dataEncoding(file.metadata, path: path)
        let dataset = loadData ? try makeDataset(config, vocabulary: vocabulary, normalization: normalization) : nil
        let spec: ModelSpec
        if let dataset {
            spec = try makeModelSpec(config, dataset: dataset)
        } else {
            spec = try specWithoutData(config, file: file, vocabulary: vocabulary, path: path)
        }
        let net = Network<Float>(spec: spec)
        try loadParameters(from: file, path: path, into: net, context: nil)
        return (TrainedModel(path: path, config: config, network: net, vocabulary: vocabulary, normalization: normalization,
                             step: Int(file.metadata["step"] ?? "") ?? 0), dataset)
    }

    /// The model's shape from the config and the tensors themselves (for sampling without data).
    static func specWithoutData(_ config: TrainConfig, file: SafeTensors.File, vocabulary: Vocabulary?, path: String) throws -> ModelSpec {
        guard let wih = file.tensor("rnn.weight_ih_l0"), wih.shape.count == 2, let head = file.tensor("head.weight"), head.shape.count == 2 else {
            throw RNNDPError("\(path): no rnn.weight_ih_l0 / head.weight tensors")
        }
        let V = file.tensor("embedding.weight")?.shape.first ?? wih.shape[1]  // with an embedding, its rows
        let input: InputKind = vocabulary != nil ? .tokens(vocabulary: V) : .dense(features: wih.shape[1])
        return makeModelSpec(config, input: input, outputSize: head.shape[0],
                             output: config.model.output ?? (vocabulary != nil ? .everyStep : .lastStep),
                             loss: config.training.loss ?? (vocabulary != nil ? .crossEntropy : .mse))
    }

    /// Characters generated one at a time after feeding `prime`, carrying the hidden state;
    /// sampling from softmax(logits / temperature) with the given seed.
    public func sample(prime: String, length: Int, temperature: Double, seed: UInt64) throws -> String {
        guard let vocab = vocabulary, case .tokens = network.spec.input else {
            throw RNNDPError("\(path): not a character model (no vocabulary); sampling needs a text model")
        }
        guard !network.spec.bidirectional else {
            throw RNNDPError("\(path): a bidirectional model reads each sequence backwards too; it cannot generate one character at a time")
        }
        var primeTokens: [Int32] = []
        for c in prime.unicodeScalars {
            guard let t = vocab.token(c) else {
                throw RNNDPError("--prime: character '\(c.escaped(asASCII: true))' is not in the model's vocabulary of \(vocab.count)")
            }
            primeTokens.append(t)
        }
        if primeTokens.isEmpty { primeTokens = [vocab.token("\n") ?? 0] }
        return Generator.generate(network, vocab: vocab, prime: primeTokens, length: length, temperature: temperature, seed: seed)
    }
}

/// Autoregressive character generation with a carried state (batch of one, one step at a time).
enum Generator {
    static func generate(_ net: Network<Float>, vocab: Vocabulary, prime: [Int32], length: Int, temperature: Double, seed: UInt64) -> String {
        let sampler = Network<Float>(spec: net.spec)
        sampler.parameters.copy(from: net.parameters)
        if net.runningStatistics.count > 0 { sampler.runningStatistics.copy(from: net.runningStatistics) }
        var state = [Float](repeating: 0, count: sampler.stateCount)
        var rng = Xoshiro256(seed: seed, stream: RandomStream.sampling.rawValue)
        var out: [Int32] = []
        var first = true
        var feed = prime
        while out.count < length {
            for token in feed {
                let batch = Batch(batchSize: 1, steps: 1, tokens: [token])
                if first {
                    sampler.forward(batch)  // the model's own initial state (zeros or learned)
                    first = false
                } else {
                    state.withUnsafeBufferPointer { sampler.forward(batch, initialState: $0.baseAddress) }
                }
                state.withUnsafeMutableBufferPointer { sampler.finalState(into: $0.baseAddress!) }
            }
            let logits = sampler.outputs.map { Double($0) / temperature }
            let m = logits.max() ?? 0
            let w = logits.map { exp($0 - m) }
            var u = rng.nextDouble() * w.reduce(0, +)
            var choice = w.count - 1
            for (i, wi) in w.enumerated() { u -= wi; if u < 0 { choice = i; break } }
            out.append(Int32(choice))
            feed = [Int32(choice)]
        }
        return vocab.decode(out)
    }
}

/// The result of `rnn-dp eval`: sums over the validation samples, reduced across ranks.
public struct Evaluation {
    public var samples: Int
    public var loss: Double
    public var accuracy: Double?
    /// Series only: errors in the data's original units.
    public var rmse: Double?
    public var mae: Double?
    /// A character model: the loss also as perplexity and bits per character.
    public var perCharacter = false

    public var lines: [String] {
        var out = [String(format: "samples: %d", samples)]
        if accuracy != nil || rmse == nil {
            out.append(String(format: "loss: %.6f nats", loss))
        }
        if let acc = accuracy {
            out.append(String(format: "accuracy: %.4f", acc))
        }
        if accuracy != nil && perCharacter {
            out.append(String(format: "perplexity: %.4f", exp(loss)))
            out.append(String(format: "bits per character: %.4f", loss / log(2)))
        }
        if let rmse, let mae {
            out.append(String(format: "mse (normalized): %.6f", loss))
            out.append(String(format: "rmse (original units): %.6g", rmse))
            out.append(String(format: "mae (original units): %.6g", mae))
        }
        return out
    }
}

extension Evaluation {
    /// The line training prints after its last evaluation, in the data's terms.
    static func describe(loss v: Double, accuracy: Double?, dataset: Dataset) -> String {
        switch dataset {
        case is TextDataset:
            return String(format: "validation: loss %.4f nats/char, perplexity %.3f, %.4f bits/char", v, exp(v), v / log(2))
        case let s as SeriesDataset:
            return String(format: "validation: MSE %.5f (normalized), RMSE %.5g in original units", v, v.squareRoot() * s.std)
        case is AddingProblem:
            return String(format: "validation: MSE %.5f (baseline 0.167 for the adding problem)", v)
        default:
            if let acc = accuracy { return String(format: "validation: loss %.4f, accuracy %.2f%%", v, acc * 100) }
            return String(format: "validation: MSE %.5f", v)
        }
    }
}

extension TrainedModel {
    /// `rnn-dp eval`: the validation evaluation of this model on `dataset`.
    public func evaluate(_ dataset: Dataset, comm: Communicator) throws -> Evaluation {
        guard var e = try evaluateValidation(network: network, dataset: dataset, comm: comm, std: normalization?.std ?? 1) else {
            throw RNNDPError("\(path): the data has no validation samples (data.validation_fraction, data.validation_path)", collective: true)
        }
        e.perCharacter = dataset is TextDataset
        return e
    }
}

/// Loss (and accuracy, or RMSE/MAE in original units, `std` being the series' scale) over the
/// dataset's validation samples, each rank taking its shard in chunks of 128; identical on every
/// rank after one reduction. nil when the data has no validation samples. Used by training's
/// evaluations and by `rnn-dp eval`, so both report the same number.
func evaluateValidation(network: Network<Float>, dataset: Dataset, comm: Communicator, std: Double) throws -> Evaluation? {
    let n = dataset.validationCount
    guard n > 0 else { return nil }
    // Fixed chunks of 128 samples, whole chunks per rank, and an exact (fixed-point) sum of the
    // per-chunk sums: the result has the same bits on any number of ranks.
    let chunk = 128, chunks = (n + chunk - 1) / chunk
    var parts: [[Double]] = []  // per chunk: loss, terms, correct, squared error, absolute error (original units)
    for c in Shard.rows(globalBatch: chunks, rank: comm.rank, size: comm.size) {
        let batch = dataset.validationBatch((c * chunk)..<min((c + 1) * chunk, n))
        network.forward(batch)
        var sums = [Double](repeating: 0, count: 5)
        if network.spec.loss == .mse {
            for (k, y) in network.outputs.enumerated() {
                let e = Double(y - batch.targetValues[k]) * std
                sums[3] += e * e
                sums[4] += abs(e)
            }
        }
        let s = network.lossOfLastForward(batch)
        sums[0] = s.sum
        sums[1] = Double(s.count)
        sums[2] = Double(s.correct)
        parts.append(sums)
    }
    let sums = try FixedPoint.sum(parts, count: 5, totalParts: chunks, comm: comm)
    let values = sums[1] * Double(network.spec.outputSize)
    return Evaluation(samples: n, loss: sums[0] / sums[1],
                      accuracy: network.spec.loss == .crossEntropy ? sums[2] / sums[1] : nil,
                      rmse: network.spec.loss == .mse ? (sums[3] / values).squareRoot() : nil,
                      mae: network.spec.loss == .mse ? sums[4] / values : nil)
}

/// `rnn-dp inspect`: what a file holds, and whether its checksum matches.
public enum Inspector {
    /// The lines to print, and whether the stored checksum disagrees with the data.
    public static func describe(path: String) throws -> (lines: [String], checksumMismatch: Bool) {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw RNNDPError("\(path): \(FileManager.default.fileExists(atPath: path) ? "cannot read the file" : "no such file")")
        }
        let bytes = Array(data)
        let file: SafeTensors.File
        do { file = try SafeTensors.decode(bytes) } catch let e as SafeTensors.FormatError {
            throw RNNDPError("\(path): not a valid safetensors file: \(e.message)")
        }
        var out = ["file: \(path) (\(bytes.count) bytes)"]
        let stored = file.metadata["checksum"]
        let actual = SafeTensors.dataChecksum(bytes) ?? "?"
        out.append("checksum: " + (stored == nil ? "none stored (data \(actual))" : stored == actual ? "ok (\(actual))" : "MISMATCH: stored \(stored!), data \(actual)"))
        for key in ["format", "kind", "step", "samples_seen", "optimizer", "optimizer_steps", "schedule.rate", "schedule.best", "schedule.bad_evaluations", "schedule.cooldown_left", "schedule", "skipped_steps", "world_size",
                    "normalization_mean", "normalization_std"] {
            if let v = file.metadata[key] { out.append("\(key): \(v)") }
        }
        if let v = file.metadata["vocabulary"], let chars = (try? JSONSerialization.jsonObject(with: Data(v.utf8))) as? [String] {
            out.append("vocabulary: \(chars.count) characters")
        }
        if let c = file.metadata["config"] {
            out.append("config:")
            out += c.split(separator: "\n").map { "  \($0)" }
        }
        let total = file.tensors.reduce(0) { $0 + $1.values.count }
        out.append("tensors: \(file.tensors.count), \(total) values (float32)")
        for t in file.tensors { out.append("  \(t.name) \(t.shape)") }
        return (out, stored != nil && stored != actual)
    }
}
