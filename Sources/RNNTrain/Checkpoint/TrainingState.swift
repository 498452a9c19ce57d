import Foundation
import RNN
import RNNData

/// The metadata of every file rnn-dp writes (model.safetensors and checkpoints): enough to
/// rebuild the model and its data encoding. The tensors are described in Checkpoint.swift.
struct ModelMetadata {
    var kind = "model"
    var step: Int
    /// The resolved config, one "key: value" line per key (ConfigLoader.storedValues reads it).
    var config: String
    /// The parameter names in buffer order.
    var layout: [String]
    /// Text models: the characters, in token order.
    var vocabulary: [Unicode.Scalar]?
    /// Series models: the normalization of the training data.
    var normalization: (mean: Double, std: Double)?

    init(step: Int, config: String, layout: [String], dataset: Dataset) {
        self.step = step
        self.config = config
        self.layout = layout
        if let text = dataset as? TextDataset { vocabulary = text.vocabulary.characters }
        if let s = dataset as? SeriesDataset { normalization = (s.mean, s.std) }
    }

    var encoded: [String: String] {
        var m = ["format": Checkpoint.format, "kind": kind, "step": String(step), "config": config, "layout": layout.joined(separator: ",")]
        if let v = vocabulary {
            m["vocabulary"] = (try? String(decoding: JSONSerialization.data(withJSONObject: v.map { String($0) }), as: UTF8.self)) ?? ""
        }
        if let n = normalization {
            m["normalization_mean"] = String(n.mean)
            m["normalization_std"] = String(n.std)
        }
        return m
    }

    /// The data encoding stored in a file's metadata; errors name the file.
    static func dataEncoding(_ metadata: [String: String], path: String) throws -> (vocabulary: Vocabulary?, normalization: (mean: Double, std: Double)?) {
        var vocabulary: Vocabulary?
        if let v = metadata["vocabulary"] {
            guard let chars = (try? JSONSerialization.jsonObject(with: Data(v.utf8))) as? [String],
                  chars.allSatisfy({ $0.unicodeScalars.count == 1 }) else {
                throw RNNDPError("\(path): the vocabulary in the metadata is malformed")
            }
            vocabulary = Vocabulary(characters: chars.map { $0.unicodeScalars.first! })
        }
        var normalization: (Double, Double)?
        if let m = metadata["normalization_mean"].flatMap(Double.init), let s = metadata["normalization_std"].flatMap(Double.init) {
            normalization = (m, s)
        }
        return (vocabulary, normalization)
    }
}

/// What a checkpoint holds beyond the model, typed, and its place in the metadata: the position
/// in the run (the sample order is a function of (seed, step, row), so the step is the whole data
/// position), the optimizer's step count, the plateau schedule's state and the non-finite
/// guard's counters.
struct TrainingState {
    var step: Int
    var optimizer: String
    var optimizerSteps: Int
    var schedule: (rate: Double, best: Double, badEvaluations: Int, cooldownLeft: Int)?
    var skippedSteps = 0
    var skippedInARow = 0
    var worldSize = 1
    var globalBatch = 0
    var seed: UInt64 = 0

    init(step: Int, optimizer: String, optimizerSteps: Int) {
        self.step = step
        self.optimizer = optimizer
        self.optimizerSteps = optimizerSteps
    }

    /// Adds the state to a model's metadata.
    func encode(into m: inout [String: String]) {
        m["kind"] = "checkpoint"
        m["samples_seen"] = String(step * globalBatch)
        m["data_order"] = "sample order is a function of (seed \(seed), step, row); the next step is \(step + 1)"
        m["optimizer"] = optimizer
        m["optimizer_steps"] = String(optimizerSteps)
        if let s = schedule {
            m["schedule.rate"] = String(s.rate)
            m["schedule.best"] = String(s.best)
            m["schedule.bad_evaluations"] = String(s.badEvaluations)
            m["schedule.cooldown_left"] = String(s.cooldownLeft)
        }
        m["skipped_steps"] = String(skippedSteps)
        m["skipped_in_a_row"] = String(skippedInARow)
        m["world_size"] = String(worldSize)
    }

    /// The state of a checkpoint; errors name the file.
    init(metadata m: [String: String], path: String) throws {
        guard m["kind"] == "checkpoint", let step = m["step"].flatMap(Int.init) else {
            throw RNNDPError("--resume: \(path): not a checkpoint (no kind=checkpoint and step in its metadata; model.init_from loads bare weights)")
        }
        self.init(step: step, optimizer: m["optimizer"] ?? "", optimizerSteps: m["optimizer_steps"].flatMap(Int.init) ?? step)
        if let rate = m["schedule.rate"].flatMap(Double.init), let best = m["schedule.best"].flatMap(Double.init),
           let bad = m["schedule.bad_evaluations"].flatMap(Int.init), let cool = m["schedule.cooldown_left"].flatMap(Int.init) {
            schedule = (rate, best, bad, cool)
        } else if let legacy = m["schedule"] {
            schedule = TrainingState.legacySchedule(legacy)
        }
        skippedSteps = m["skipped_steps"].flatMap(Int.init) ?? 0
        skippedInARow = m["skipped_in_a_row"].flatMap(Int.init) ?? 0
        worldSize = m["world_size"].flatMap(Int.init) ?? 1
    }

    /// Older checkpoints (before the typed keys above) keep the schedule as "rate=R best=B bad=N cooldown=C".
    static func legacySchedule(_ text: String) -> (Double, Double, Int, Int)? {
        let fields = Dictionary(text.split(separator: " ").compactMap { part -> (String, Double)? in
            let kv = part.split(separator: "=")
            return kv.count == 2 ? Double(kv[1]).map { (String(kv[0]), $0) } : nil
        }, uniquingKeysWith: { a, _ in a })
        guard let r = fields["rate"], let b = fields["best"], let n = fields["bad"], let c = fields["cooldown"] else { return nil }
        return (r, b, Int(n), Int(c))
    }
}
