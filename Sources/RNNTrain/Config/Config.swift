import Foundation
import RNN
import Yams
import RNNDistributed

/// A config value after YAML parsing and type checking.
public enum ConfigValue: Equatable, CustomStringConvertible, Sendable {
    case int(Int), double(Double), bool(Bool), string(String), null

    public var description: String {
        switch self {
        case .int(let v): return String(v)
        case .double(let v): return String(v)
        case .bool(let v): return String(v)
        case .string(let v): return v
        case .null: return "null"
        }
    }
}

/// The type and the allowed values of one key.
enum KeyKind {
    case int(min: Int, max: Int = Int.max)
    /// A real number in [min, max] (or (min, max] with minExclusive).
    case double(min: Double, max: Double = .infinity, minExclusive: Bool = false, maxExclusive: Bool = false)
    case bool
    case string
    case choice([String])
    /// Either a non-negative integer or a string (a CSV column by index or name).
    case intOrString

    var expectation: String {
        switch self {
        case .int(let lo, let hi): return hi == Int.max ? "an integer >= \(lo)" : "an integer in \(lo)...\(hi)"
        case .double(let lo, let hi, let lx, let hx):
            let low = "\(lx ? ">" : ">=") \(lo)"
            return hi.isInfinite ? "a number \(low)" : "a number \(low) and \(hx ? "<" : "<=") \(hi)"
        case .bool: return "true or false"
        case .string: return "a string"
        case .choice(let c): return "one of \(c.joined(separator: ", "))"
        case .intOrString: return "a column name or index"
        }
    }
}

/// One key of the schema: dotted path, kind, default (nil: required or derived), whether null is allowed.
struct KeySpec {
    let path: String
    let kind: KeyKind
    let defaultValue: ConfigValue?
    let nullable: Bool
    let help: String
    init(_ path: String, _ kind: KeyKind, _ defaultValue: ConfigValue?, nullable: Bool = false, _ help: String) {
        self.path = path
        self.kind = kind
        self.defaultValue = defaultValue
        self.nullable = nullable
        self.help = help
    }
}

/// Every config key rnn-dp knows. A key missing from here is an error in a config file.
/// Keys with a nil default are required or derived (see TrainConfig.init).
let initChoices = ["default", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "orthogonal"]
let configSchema: [KeySpec] = [
    KeySpec("seed", .int(min: 0), .int(1234), "seed of every random stream (parameters, data order, sampling)"),
    KeySpec("data.kind", .choice(["text", "csv", "synthetic", "npy", "ts"]), nil, "text: character LM; csv: a numeric column as a series; synthetic: generated task; npy: arrays; ts: sequence classification (.ts files)"),
    KeySpec("data.path", .string, nil, "input file (text, csv; ts: the training .ts file)"),
    KeySpec("data.validation_path", .string, nil, "ts: the validation .ts file"),
    KeySpec("data.inputs", .string, nil, "npy: inputs.npy, (N, T) token ids or (N, T, I) float32"),
    KeySpec("data.targets", .string, nil, "npy: targets.npy, (N, T) or (N,) class ids, or (N, T, O) / (N, O) / (N, T) floats"),
    KeySpec("data.validation_inputs", .string, nil, "npy: validation inputs (else validation_fraction of the samples)"),
    KeySpec("data.validation_targets", .string, nil, "npy: validation targets"),
    KeySpec("data.lengths", .string, nil, "npy: lengths.npy, (N,) integers in 1..T: each sample's length, the inputs and per-step targets padded to T (padding is never read or computed)"),
    KeySpec("data.validation_lengths", .string, nil, "npy: the validation inputs' lengths (needed with data.lengths and validation_inputs)"),
    KeySpec("data.bucketing", .bool, nil, "npy, ts with unequal lengths: draw global batches of similar lengths (default true; needs data.shuffle)"),
    KeySpec("data.shuffle", .bool, nil, "npy, ts: visit samples in a seeded random order per epoch (default true); false: step k uses samples k*B .. k*B+B-1 (mod N) in file order"),
    KeySpec("data.vocabulary", .int(min: 1, max: 10_000_000), nil, "npy: number of token ids (default: largest id + 1)"),
    KeySpec("data.classes", .int(min: 1, max: 10_000_000), nil, "npy: number of classes (default: largest class id + 1)"),
    KeySpec("data.column", .intOrString, nil, "csv: column name or 0-based index (default: the second of two columns)"),
    KeySpec("data.validation_fraction", .double(min: 0, max: 1, maxExclusive: true), nil, "text, csv: the last fraction of the file used for validation (default 0.1)"),
    KeySpec("data.interpolate_missing", .bool, nil, "csv: fill empty values by linear interpolation instead of failing"),
    KeySpec("data.task", .choice(["adding"]), nil, "synthetic: the task (adding problem)"),
    KeySpec("data.length", .int(min: 2, max: 1_000_000), nil, "synthetic: sequence length (the same as training.sequence_length)"),
    KeySpec("model.cell", .choice(CellKind.allCases.map(\.rawValue)), .string("rnn"), "recurrent cell: rnn (Elman), lstm, gru"),
    KeySpec("model.activation", .choice(Activation.allCases.map(\.rawValue)), .string("tanh"), "Elman cell activation"),
    KeySpec("model.leaky_slope", .double(min: 0, max: 1, minExclusive: true, maxExclusive: true), .double(0.01), "negative slope of leaky_relu"),
    KeySpec("model.hidden_size", .int(min: 1, max: 65536), .int(128), "H: hidden units per layer"),
    KeySpec("model.layers", .int(min: 1, max: 64), .int(1), "L: stacked recurrent layers"),
    KeySpec("model.output", .choice(OutputMode.allCases.map(\.rawValue)), nil, "every_step (many-to-many) or last_step (many-to-one); default every_step for text, last_step otherwise"),
    KeySpec("model.layer_norm", .bool, .bool(false), "layer normalization of the gate pre-activations inside the cells"),
    KeySpec("model.batch_norm", .bool, .bool(false), "batch normalization of W_ih x over the global batch (statistics synchronized across ranks)"),
    KeySpec("model.bidirectional", .bool, .bool(false), "every layer also runs over the sequence backwards (PyTorch's bidirectional=True, tensors ..._reverse); the next layer and the head read [forward | backward]; last_step reads PyTorch's h_n"),
    KeySpec("model.embedding_size", .int(min: 1, max: 65536), .null, nullable: true, "token input through an embedding of this width E (nn.Embedding: embedding.weight (V, E)) instead of one-hot columns of W_ih (null: none)"),
    KeySpec("model.tie_weights", .bool, .bool(false), "the head's weight is the embedding's (Press and Wolf 2017): needs model.embedding_size = model.hidden_size, a head over the vocabulary, and every_step output"),
    KeySpec("model.dropout", .double(min: 0, max: 1, maxExclusive: true), .double(0), "dropout probability on the output of every recurrent layer but the last (PyTorch's dropout=); training only, kept values scaled by 1/(1-p); masks depend on (seed, step, sample, layer, time step, unit), not on the rank count"),
    KeySpec("model.input_dropout", .double(min: 0, max: 1, maxExclusive: true), .double(0), "dropout probability on the dense input of the first layer (not for token input)"),
    KeySpec("model.variational_dropout", .bool, .bool(false), "dropout masks drawn once per sequence and used at every time step (Gal and Ghahramani 2016), at each of the three places"),
    KeySpec("model.head_dropout", .double(min: 0, max: 1, maxExclusive: true), .double(0), "dropout probability on the head's input (the top layer's output)"),
    KeySpec("model.initial_state", .choice(["zeros", "learned"]), .string("zeros"), "initial hidden state: zeros, or a trained parameter per layer"),
    KeySpec("model.init.input_weights", .choice(initChoices), .string("default"), "initializer of weight_ih (default: PyTorch's U(-1/sqrt(H), 1/sqrt(H)))"),
    KeySpec("model.init.recurrent_weights", .choice(initChoices + ["identity"]), .string("default"), "initializer of weight_hh (identity: Le et al. 2015, for relu RNNs)"),
    KeySpec("model.init.head_weights", .choice(initChoices), .string("default"), "initializer of head.weight"),
    KeySpec("model.init.biases", .choice(["default", "zeros"]), .string("default"), "initializer of every bias"),
    KeySpec("model.init.forget_bias", .double(min: -100, max: 100), .null, nullable: true, "LSTM: set the forget-gate part of bias_ih to this (and of bias_hh to 0)"),
    KeySpec("model.init_from", .string, .null, nullable: true, "start from the parameters of this safetensors file (PyTorch names and shapes)"),
    KeySpec("training.loss", .choice(LossKind.allCases.map(\.rawValue)), nil, "default cross_entropy for text, mse otherwise"),
    KeySpec("training.global_batch_size", .int(min: 1, max: 10_000_000), .int(32), "B: samples per step summed over all ranks"),
    KeySpec("training.sequence_length", .int(min: 1, max: 1_000_000), .int(64), "T: time steps per sample"),
    KeySpec("training.steps", .int(min: 0, max: 1_000_000_000), .int(1000), "optimizer steps"),
    KeySpec("training.optimizer.name", .choice(OptimizerSettings.Kind.allCases.map(\.rawValue)), .string("sgd"), "optimizer (PyTorch's update rules)"),
    KeySpec("training.optimizer.learning_rate", .double(min: 0, max: 1e6, minExclusive: true), nil, "base learning rate (default: PyTorch's for the optimizer)"),
    KeySpec("training.optimizer.momentum", .double(min: 0, max: 1, maxExclusive: true), nil, "sgd, rmsprop: momentum (default 0)"),
    KeySpec("training.optimizer.nesterov", .bool, nil, "sgd: Nesterov momentum"),
    KeySpec("training.optimizer.dampening", .double(min: 0, max: 1), nil, "sgd: momentum dampening"),
    KeySpec("training.optimizer.weight_decay", .double(min: 0, max: 1e3), nil, "L2 penalty (adamw: decoupled decay; default 0.01 for adamw, 0 otherwise)"),
    KeySpec("training.optimizer.beta1", .double(min: 0, max: 1, maxExclusive: true), nil, "adam, adamw (default 0.9)"),
    KeySpec("training.optimizer.beta2", .double(min: 0, max: 1, maxExclusive: true), nil, "adam, adamw (default 0.999)"),
    KeySpec("training.optimizer.eps", .double(min: 0, max: 1, minExclusive: true), nil, "adam, adamw, rmsprop (default 1e-8), adagrad (1e-10)"),
    KeySpec("training.optimizer.alpha", .double(min: 0, max: 1), nil, "rmsprop: smoothing constant (default 0.99)"),
    KeySpec("training.optimizer.centered", .bool, nil, "rmsprop: centered variant"),
    KeySpec("training.optimizer.lr_decay", .double(min: 0), nil, "adagrad: learning-rate decay"),
    KeySpec("training.optimizer.initial_accumulator_value", .double(min: 0), nil, "adagrad: initial sum of squares"),
    KeySpec("training.schedule.name", .choice(Schedule.names), .string("constant"), "learning-rate schedule"),
    KeySpec("training.schedule.step_size", .int(min: 1), nil, "step: decay every N steps; triangular: steps from base to max_lr"),
    KeySpec("training.schedule.gamma", .double(min: 0, max: 1, minExclusive: true), nil, "step, exponential: decay factor (default 0.1 for step, 0.99 for exponential)"),
    KeySpec("training.schedule.warmup_steps", .int(min: 0), nil, "cosine: linear warmup steps (default 0)"),
    KeySpec("training.schedule.min_lr", .double(min: 0), nil, "cosine: final rate; plateau: lower bound (default 0)"),
    KeySpec("training.schedule.max_lr", .double(min: 0, minExclusive: true), nil, "triangular: peak rate"),
    KeySpec("training.schedule.factor", .double(min: 0, max: 1, minExclusive: true, maxExclusive: true), nil, "plateau: multiply the rate by this (default 0.1)"),
    KeySpec("training.schedule.patience", .int(min: 0), nil, "plateau: evaluations without improvement before reducing (default 10)"),
    KeySpec("training.schedule.threshold", .double(min: 0, max: 1), nil, "plateau: relative improvement that counts (default 1e-4)"),
    KeySpec("training.schedule.cooldown", .int(min: 0), nil, "plateau: evaluations to wait after a reduction (default 0)"),
    KeySpec("training.clip_norm", .double(min: 0, minExclusive: true), .null, nullable: true, "clip the gradient to this global L2 norm (null: off)"),
    KeySpec("training.clip_value", .double(min: 0, minExclusive: true), .null, nullable: true, "clamp every gradient element to [-v, v] (null: off)"),
    KeySpec("training.average_over_time", .bool, .bool(true), "divide gradients accumulated over time steps by T"),
    KeySpec("training.check_every", .int(min: 0), .int(100), "compare a parameter checksum across ranks every N steps (0: only at start and end)"),
    KeySpec("training.eval_every", .int(min: 0), .int(0), "validation loss every N steps (0: only at the end)"),
    KeySpec("training.eval_samples", .int(min: 0, max: 100_000_000), .int(512), "at most this many validation samples"),
    KeySpec("training.threads", .int(min: 0, max: 1024), .int(0), "BLAS threads per rank (0: cores / ranks on the node)"),
    KeySpec("training.compression", .choice(Compression.allCases.map(\.rawValue)), .string("none"), "exchange gradients as bf16 or fp16 (summed in float32 inside the reduction; encoded bucket by bucket, so it overlaps the backward pass as float32 buckets do)"),
    KeySpec("training.accumulate_steps", .int(min: 1, max: 1_000_000), .int(1), "split each rank's rows into this many micro-batches, summing their gradients before the one exchange of the step"),
    KeySpec("training.stateful", .bool, .bool(false), "text: the training text read as global_batch_size contiguous streams, sequence_length characters per step, the hidden state carried from step to step (truncated BPTT over the whole text)"),
    KeySpec("training.local_sgd_steps", .int(min: 0, max: 1_000_000), .int(0), "local SGD: every rank updates with its own shard's gradient and the parameters are averaged over ranks every this many steps (0: off, gradients averaged every step)"),
    KeySpec("training.reproducible", .bool, .bool(false), "bitwise-identical results on any number of ranks: fixed micro-shards, gradients summed exactly in 64-bit fixed point, ghost batch norm per micro-shard (docs/REPRODUCIBILITY.md)"),
    KeySpec("training.micro_shards", .int(min: 0, max: 1_000_000), .int(0), "reproducible: the global batch in this many fixed micro-shards, each computed on its own; at most this many ranks (0: min(global_batch_size, 8))"),
    KeySpec("training.bptt_length", .int(min: 0, max: 1_000_000), .int(0), "truncated BPTT: chunks of this many steps, hidden state carried across chunks without gradient (0: full BPTT; every_step models)"),
    KeySpec("training.bucket_mb", .double(min: 0, max: 4096), .double(4), "gradient exchange in buckets of this many MiB, each reduced (nonblocking) as soon as its gradients are final, overlapping the backward pass (0: one blocking allreduce after it)"),
    KeySpec("training.on_nonfinite", .choice(["stop", "skip"]), .string("stop"), "non-finite loss or gradient: stop (checkpoint the last good state) or skip the update"),
    KeySpec("training.max_skipped", .int(min: 1), .int(10), "on_nonfinite skip: stop after this many skipped steps in a row"),
    KeySpec("training.timeout_seconds", .double(min: 0), .double(600), "abort when a collective waits longer than this (0: never)"),
    KeySpec("parallel.pipeline_stages", .int(min: 1, max: 64), .int(1), "S: pipeline model parallelism, the layers split into S stages on neighbouring ranks; N = D x S ranks train D data-parallel replicas of the pipeline (docs/PARALLELISM.md)"),
    KeySpec("parallel.chunk_steps", .int(min: 0, max: 1_000_000), .int(0), "time steps per chunk of the forward and backward sweeps, the unit a pipeline's stages pass on (0: the whole sequence; at any S, so a run compares bitwise with a pipeline of the same chunks)"),
    KeySpec("parallel.stage_layers", .string, .null, nullable: true, "layers of each pipeline stage, from the bottom, comma-separated, e.g. \"2,1,1\" (null: balanced by FLOPs)"),
    KeySpec("checkpoint.every", .int(min: 0), .int(0), "write a checkpoint every N steps (0: only at the end and on a signal)"),
    KeySpec("checkpoint.keep", .int(min: 1, max: 1000), .int(3), "keep the newest N checkpoints"),
    KeySpec("checkpoint.directory", .string, .null, nullable: true, "where checkpoints go (default: output.directory/checkpoints)"),
    KeySpec("output.directory", .string, .string("runs/default"), "where metrics.jsonl and model.safetensors go"),
    KeySpec("output.log_every", .int(min: 1), .int(10), "print and record a metrics line every N steps"),
    KeySpec("output.sample_length", .int(min: 0, max: 1_000_000), .int(0), "text: characters to generate at the end (0: none)"),
    KeySpec("output.sample_temperature", .double(min: 0, max: 100, minExclusive: true), .double(0.8), "text: sampling temperature"),
]

/// The reference of every key: `rnn-dp keys` prints it; docs/CONFIG.md is its markdown form.
public enum ConfigReference {
    static func defaultText(_ spec: KeySpec) -> String {
        guard let d = spec.defaultValue else { return "—" }
        return d == .null ? "null" : d.description
    }

    public static var markdown: String {
        var out = """
        # Configuration keys

        Generated by `rnn-dp keys --markdown` from the schema in Sources/RNNTrain/Config.swift (a test
        checks that this file matches it). Any key can be given in the YAML file or as
        `--set key.path=value`. "—": no fixed default (required, optional, or derived from other keys or the data; see the meaning).

        | key | values | default | meaning |
        |---|---|---|---|

        """
        for spec in configSchema {
            let values = spec.kind.expectation + (spec.nullable ? ", or null" : "")
            out += "| `\(spec.path)` | \(values) | \(defaultText(spec)) | \(spec.help) |\n"
        }
        return out
    }

    public static var plain: [String] {
        configSchema.map { "\($0.path) = \(defaultText($0))  (\($0.kind.expectation)\($0.nullable ? ", or null" : "")): \($0.help)" }
    }
}

/// A raw value as read from the file or from --set, with where it came from.
struct RawValue {
    let text: String
    let isNull: Bool
    let origin: String  // "file:line" or "--set"
}

/// Parses a config file plus --set overrides against the schema; every error names the key and
/// the place it came from.
public struct ConfigLoader {
    public static func load(path: String, overrides: [String] = []) throws -> TrainConfig {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw RNNDPError("\(path): \(FileManager.default.fileExists(atPath: path) ? "cannot read the config file" : "no such config file")", collective: true)
        }
        guard let text = String(data: data, encoding: .utf8) else { throw RNNDPError("\(path): config file is not UTF-8 text", collective: true) }
        return try parse(yaml: text, name: path, overrides: overrides)
    }

    public static func parse(yaml: String, name: String, overrides: [String] = []) throws -> TrainConfig {
        var raw: [String: RawValue] = [:]
        let node: Node?
        do {
            node = try Yams.compose(yaml: yaml)
        } catch let e as YamlError {
            throw RNNDPError("\(name): invalid YAML: \(oneLine(e))", collective: true)
        } catch {
            throw RNNDPError("\(name): invalid YAML: \(error)", collective: true)
        }
        if let node {
            guard case .mapping = node else { throw RNNDPError("\(name): the config must be a mapping of keys (like 'model: {hidden_size: 64}')", collective: true) }
            try flatten(node, prefix: "", name: name, into: &raw)
        }
        for o in overrides {
            guard let eq = o.firstIndex(of: "=") else {
                throw RNNDPError("--set \(o): expected key.path=value", collective: true)
            }
            let key = String(o[..<eq]).trimmingCharacters(in: .whitespaces)
            let value = String(o[o.index(after: eq)...])
            guard configSchema.contains(where: { $0.path == key }) else {
                throw RNNDPError("--set \(key): unknown key\(suggestion(for: key))", collective: true)
            }
            let parsed = (try? Yams.compose(yaml: value)) ?? nil
            if case .scalar(let s)? = parsed {
                raw[key] = RawValue(text: s.string, isNull: (s.style == .plain && ["null", "~", "Null", "NULL"].contains(s.string)), origin: "--set")
            } else if parsed == nil {
                raw[key] = RawValue(text: "", isNull: true, origin: "--set")
            } else {
                throw RNNDPError("--set \(key): expected a single value, got '\(value)'", collective: true)
            }
        }
        var values: [String: ConfigValue] = [:]
        var given: Set<String> = []
        for spec in configSchema {
            if let r = raw[spec.path] {
                values[spec.path] = try convert(r, spec)
                given.insert(spec.path)
            } else if let d = spec.defaultValue {
                values[spec.path] = d
            }
        }
        return try TrainConfig(values: values, given: given, source: name)
    }

    /// The config stored in a checkpoint's metadata (its resolved "key: value" lines), with
    /// --set overrides on top.
    public static func fromCheckpoint(path: String, overrides: [String]) throws -> TrainConfig {
        let file: SafeTensors.File
        do { file = try Checkpoint.read(path: path) } catch let e as Checkpoint.Error { throw RNNDPError(Checkpoint.resumeError(e, path: path), collective: true) }
        do { return try fromMetadata(file, name: path, overrides: overrides) } catch let e as RNNDPError where e.message.hasPrefix("\(path): no config") {
            throw RNNDPError("--resume: \(e.message)", collective: true)
        }
    }

    /// The config stored in a model or checkpoint file's metadata, with overrides on top.
    public static func fromMetadata(_ file: SafeTensors.File, name path: String, overrides: [String]) throws -> TrainConfig {
        guard let text = file.metadata["config"] else { throw RNNDPError("\(path): no config in the metadata; give --config", collective: true) }
        let stored = storedValues(text).map { "\($0.key)=\($0.value)" }
        return try parse(yaml: "", name: path, overrides: stored + overrides)
    }

    /// The (key, value) pairs of a resolved config as files store it (`TrainConfig.resolvedText`,
    /// one "key: value" line per key).
    static func storedValues(_ text: String) -> [(key: String, value: String)] {
        text.split(separator: "\n").compactMap { line in
            guard let colon = line.firstIndex(of: ":") else { return nil }
            let rest = line[line.index(after: colon)...]
            return (String(line[..<colon]), String(rest.hasPrefix(" ") ? rest.dropFirst() : rest))
        }
    }

    static func oneLine(_ e: Error) -> String {
        String(describing: e).split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty }.prefix(2).joined(separator: ": ")
    }

    static func flatten(_ node: Node, prefix: String, name: String, into raw: inout [String: RawValue]) throws {
        guard case .mapping(let mapping) = node else { return }
        for (k, v) in mapping {
            let where_ = "\(name):\(k.mark.map { String($0.line) } ?? "?")"
            guard case .scalar(let ks) = k else { throw RNNDPError("\(where_): keys must be plain names", collective: true) }
            let path = prefix.isEmpty ? ks.string : "\(prefix).\(ks.string)"
            let isSection = configSchema.contains { $0.path.hasPrefix(path + ".") }
            let isKey = configSchema.contains { $0.path == path }
            switch v {
            case .mapping:
                guard isSection else {
                    throw RNNDPError(isKey ? "\(where_): \(path): expected a value, got a mapping" : "\(where_): \(path): unknown key\(suggestion(for: path))", collective: true)
                }
                try flatten(v, prefix: path, name: name, into: &raw)
            case .scalar(let s):
                guard isKey else {
                    throw RNNDPError(isSection ? "\(where_): \(path): is a section, expected keys under it (\(childKeys(of: path)))" : "\(where_): \(path): unknown key\(suggestion(for: path))", collective: true)
                }
                if raw[path] != nil { throw RNNDPError("\(where_): \(path): given twice", collective: true) }
                let isNull = (s.style == .plain && ["null", "~", "Null", "NULL", ""].contains(s.string))
                raw[path] = RawValue(text: s.string, isNull: isNull, origin: where_)
            case .sequence:
                throw RNNDPError("\(where_): \(path): \(isKey ? "expected a single value, got a list" : "unknown key\(suggestion(for: path))")", collective: true)
            }
        }
    }

    /// The direct children of a section, in schema order: "cell, activation, ..., init".
    static func childKeys(of section: String) -> String {
        var seen: [String] = []
        for spec in configSchema where spec.path.hasPrefix(section + ".") {
            let child = String(spec.path.dropFirst(section.count + 1).split(separator: ".")[0])
            if !seen.contains(child) { seen.append(child) }
        }
        return seen.joined(separator: ", ")
    }

    /// " (did you mean X?)" for the closest known key, by edit distance on the last component.
    static func suggestion(for path: String) -> String {
        // Candidates: every key and every section (a dotted prefix of a key).
        var candidates = Set<String>()
        for spec in configSchema {
            let parts = spec.path.split(separator: ".")
            for n in 1...parts.count { candidates.insert(parts.prefix(n).joined(separator: ".")) }
        }
        let best = candidates.sorted().map { ($0, editDistance($0, path)) }.min { $0.1 < $1.1 }
        if let best, best.1 <= max(3, path.count / 4) { return " (did you mean \(best.0)?)" }
        return ""
    }

    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        var prev = Array(0...b.count)
        for i in 1...max(a.count, 1) where !a.isEmpty {
            var cur = [i] + [Int](repeating: 0, count: b.count)
            for j in 1...max(b.count, 1) where !b.isEmpty {
                cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            prev = cur
        }
        return prev[b.count]
    }

    static func convert(_ r: RawValue, _ spec: KeySpec) throws -> ConfigValue {
        func bad() -> RNNDPError {
            RNNDPError("\(r.origin): \(spec.path): expected \(spec.kind.expectation)\(spec.nullable ? " or null" : ""), got '\(r.isNull ? "null" : r.text)'", collective: true)
        }
        if r.isNull {
            if spec.nullable { return .null }
            throw bad()
        }
        switch spec.kind {
        case .int(let lo, let hi):
            guard let v = Int(r.text), v >= lo, v <= hi else { throw bad() }
            return .int(v)
        case .double(let lo, let hi, let lx, let hx):
            guard let v = Double(r.text), v.isFinite else { throw bad() }
            if v < lo || (lx && v == lo) || v > hi || (hx && v == hi) { throw bad() }
            return .double(v)
        case .bool:
            switch r.text {
            case "true", "True", "TRUE": return .bool(true)
            case "false", "False", "FALSE": return .bool(false)
            default: throw bad()
            }
        case .string:
            return .string(r.text)
        case .choice(let options):
            guard options.contains(r.text) else { throw bad() }
            return .string(r.text)
        case .intOrString:
            return .string(r.text)
        }
    }
}

/// data.kind: what the data is and how it is read.
public enum DataKind: String, Sendable {
    /// A character language model over a text file.
    case text
    /// A numeric column of a CSV file as a series.
    case csv
    /// A generated task (data.task: the adding problem).
    case synthetic
    /// Arrays in .npy files.
    case npy
    /// Sequence classification from .ts files (UEA archive).
    case ts
}

/// The resolved, validated configuration of a training run.
public struct TrainConfig: Sendable {
    public struct Data: Sendable {
        public var kind: DataKind
        public var path: String?
        public var column: String?
        public var validationFraction: Double
        public var interpolateMissing: Bool
        public var task: String
        public var validationPath: String?
        public var inputs: String?
        public var targets: String?
        public var validationInputs: String?
        public var validationTargets: String?
        public var shuffle: Bool
        public var vocabulary: Int?
        public var classes: Int?
        public var lengths: String?
        public var validationLengths: String?
        public var bucketing: Bool
    }
    public struct Model: Sendable {
        public var cell: CellKind
        public var activation: Activation
        public var leakySlope: Double
        public var hiddenSize: Int
        public var layers: Int
        /// nil: from the data (npy).
        public var output: OutputMode?
        public var learnedInitialState: Bool
        public var layerNorm: Bool
        public var batchNorm: Bool
        public var initialization: InitSettings
        public var initFrom: String?
        /// Layers that also run backwards in time.
        public var bidirectional: Bool
        /// Token input through an embedding of this width; nil: none.
        public var embeddingSize: Int?
        /// head.weight is embedding.weight.
        public var tieWeights: Bool
        /// Dropout probabilities: between recurrent layers, on the dense input, on the head's input.
        public var dropout: Double
        public var inputDropout: Double
        public var headDropout: Double
        public var variationalDropout: Bool
    }
    public struct Training: Sendable {
        /// nil: from the data (npy).
        public var loss: LossKind?
        public var globalBatchSize: Int
        public var sequenceLength: Int
        public var steps: Int
        public var optimizer: OptimizerSettings
        public var learningRate: Double
        public var schedule: Schedule
        public var clipNorm: Double?
        public var clipValue: Double?
        public var averageOverTime: Bool
        public var checkEvery: Int
        public var evalEvery: Int
        public var evalSamples: Int
        public var threads: Int
        public var bucketMB: Double
        public var compression: Compression
        public var accumulateSteps: Int
        /// Stateful streams (text): consecutive chunks per row, the state carried across steps.
        public var stateful: Bool
        /// Local SGD: parameters averaged every this many steps (0: gradients every step).
        public var localSGDSteps: Int
        /// training.reproducible: the number of fixed micro-shards of the global batch; nil when off.
        public var microShards: Int?
        public var bpttLength: Int
        public var skipNonFinite: Bool
        public var maxSkipped: Int
        public var timeoutSeconds: Double
    }
    public struct Checkpointing: Sendable {
        public var every: Int
        public var keep: Int
        public var directory: String
    }
    public struct Output: Sendable {
        public var directory: String
        public var logEvery: Int
        public var sampleLength: Int
        public var sampleTemperature: Double
    }

    /// parallel.*: pipeline stages and the chunks of the sweeps.
    public struct Parallel: Sendable {
        public var pipelineStages: Int
        public var chunkSteps: Int
        /// Layers per stage as given (nil: balanced by FLOPs when training starts).
        public var stageLayers: [Int]?
    }

    public var seed: UInt64
    public var parallel: Parallel
    public var data: Data
    public var model: Model
    public var training: Training
    public var output: Output
    public var checkpoint: Checkpointing
    /// Every key with its resolved value, in schema order (printed at start, stored in files).
    public let resolved: [(key: String, value: ConfigValue)]
    public let source: String

    init(values: [String: ConfigValue], given: Set<String>, source: String) throws {
        let r = ConfigResolver(values: values, given: given, source: source)
        data = try r.data()
        model = try r.model()
        training = try r.training()
        parallel = try r.parallel()
        output = r.output()
        checkpoint = r.checkpointing()
        seed = UInt64(r.int("seed")!)
        resolved = r.listing()
        warnings = r.warnings
        self.source = source
    }

    /// Keys that were given but do not apply (printed by rank 0 at start).
    public let warnings: [String]

    /// The resolved config as YAML-like "key: value" lines (stored in safetensors metadata).
    public var resolvedText: String {
        resolved.map { "\($0.key): \($0.value)" }.joined(separator: "\n")
    }
}

/// Resolves the given values section by section: each resolver reads its keys, fills in the
/// defaults that depend on other keys, and enforces the rules that tie keys together (all of the
/// config's cross-key rules live here; those that need the data or the rank count are checked
/// when training starts, Trainer.checkShapes). Keys are those of `configSchema`.
final class ConfigResolver {
    var v: [String: ConfigValue]
    let given: Set<String>
    let source: String
    /// Keys that were given but do not apply.
    var warnings: [String] = []

    init(values: [String: ConfigValue], given: Set<String>, source: String) {
        v = values
        self.given = given
        self.source = source
    }

    func err(_ key: String, _ msg: String) -> RNNDPError { RNNDPError("\(source): \(key): \(msg)", collective: true) }
    func int(_ k: String) -> Int? { if case .int(let x)? = v[k] { return x }; return nil }
    func dbl(_ k: String) -> Double? {
        switch v[k] { case .double(let x)?: return x; case .int(let x)?: return Double(x); default: return nil }
    }
    func str(_ k: String) -> String? { if case .string(let x)? = v[k] { return x }; return nil }
    func bool(_ k: String) -> Bool? { if case .bool(let x)? = v[k] { return x }; return nil }
    func setDefault(_ k: String, _ x: ConfigValue) { if v[k] == nil { v[k] = x } }
    /// Keys that mean something only for some values of a selector key: an error, or with
    /// `warn` (settings of another optimizer or schedule, which a --set of the name leaves
    /// behind) a warning that they are ignored.
    func only(_ keys: [String], when selector: String, in allowed: [String], warn: Bool = false) throws {
        let current = str(selector) ?? ""
        // An explicit null (a nullable key as a checkpoint's config stores it) sets nothing.
        for key in keys where given.contains(key) && v[key] != .null && !allowed.contains(current) {
            let message = "applies only when \(selector) is \(allowed.joined(separator: " or ")) (it is \(current))"
            guard warn else { throw err(key, message) }
            warnings.append("\(source): \(key): ignored: \(message)")
            v[key] = configSchema.first { $0.path == key }?.defaultValue  // as if not given
        }
    }

    var lossKind: LossKind? { str("training.loss").map { LossKind(rawValue: $0)! } }
    var outputMode: OutputMode? { str("model.output").map { OutputMode(rawValue: $0)! } }

    /// data.*, and the loss and output the data kind implies.
    func data() throws -> TrainConfig.Data {
        guard let kind = str("data.kind") else { throw err("data.kind", "required (text, csv, synthetic, npy or ts)") }
        try only(["data.column", "data.interpolate_missing"], when: "data.kind", in: ["csv"])
        try only(["data.task", "data.length"], when: "data.kind", in: ["synthetic"])
        try only(["data.path"], when: "data.kind", in: ["text", "csv", "ts"])
        try only(["data.validation_fraction"], when: "data.kind", in: ["text", "csv", "npy"])
        try only(["data.validation_path"], when: "data.kind", in: ["ts"])
        try only(["data.inputs", "data.targets", "data.validation_inputs", "data.validation_targets", "data.vocabulary", "data.classes",
                  "data.lengths", "data.validation_lengths"], when: "data.kind", in: ["npy"])
        try only(["data.shuffle", "data.bucketing"], when: "data.kind", in: ["npy", "ts"])
        if str("data.validation_lengths") != nil && str("data.lengths") == nil { throw err("data.validation_lengths", "needs data.lengths for the training inputs") }
        if str("data.validation_lengths") != nil && str("data.validation_inputs") == nil { throw err("data.validation_lengths", "needs data.validation_inputs") }
        if str("data.lengths") != nil && str("data.validation_inputs") != nil && str("data.validation_lengths") == nil {
            throw err("data.validation_lengths", "required with data.lengths and data.validation_inputs")
        }
        if bool("data.bucketing") == true && bool("data.shuffle") == false { throw err("data.bucketing", "needs data.shuffle: true (without shuffling, batches stay in file order)") }
        let fromFiles = kind == "npy" || kind == "ts"  // sequence length, loss and output come from the data
        if fromFiles {
            for key in ["training.sequence_length"] where given.contains(key) {
                throw err(key, "comes from the data when data.kind is \(kind); remove it")
            }
            setDefault("data.shuffle", .bool(true))
        }
        if ["text", "csv", "ts"].contains(kind) && str("data.path") == nil { throw err("data.path", "required when data.kind is \(kind)") }
        if kind == "npy" {
            for key in ["data.inputs", "data.targets"] where str(key) == nil { throw err(key, "required when data.kind is npy") }
            if (str("data.validation_inputs") == nil) != (str("data.validation_targets") == nil) {
                throw err(str("data.validation_inputs") == nil ? "data.validation_inputs" : "data.validation_targets", "give both validation_inputs and validation_targets, or neither")
            }
            if str("data.validation_inputs") != nil && given.contains("data.validation_fraction") {
                throw err("data.validation_fraction", "not used when validation_inputs are given")
            }
        }
        if kind == "synthetic" {
            if let length = int("data.length") {
                if given.contains("training.sequence_length") && int("training.sequence_length") != length {
                    throw err("data.length", "\(length) differs from training.sequence_length \(int("training.sequence_length")!); give one of them")
                }
                v["training.sequence_length"] = .int(length)
            }
            setDefault("data.task", .string("adding"))
        }
        if kind == "text" || kind == "csv" { setDefault("data.validation_fraction", .double(0.1)) }
        if kind == "npy" && str("data.validation_inputs") == nil { setDefault("data.validation_fraction", .double(0.1)) }
        if kind == "csv" { setDefault("data.interpolate_missing", .bool(false)) }
        // Defaults that depend on the data kind (npy and ts: from the data, checked when it is loaded).
        if !fromFiles {
            setDefault("model.output", .string(kind == "text" ? "every_step" : "last_step"))
            setDefault("training.loss", .string(kind == "text" ? "cross_entropy" : "mse"))
        } else if kind == "ts" {
            setDefault("model.output", .string("last_step"))
            setDefault("training.loss", .string("cross_entropy"))
        }
        let loss = lossKind, output = outputMode
        if kind == "text" && loss != .crossEntropy { throw err("training.loss", "text data predicts characters: use cross_entropy") }
        if (kind == "csv" || kind == "synthetic") && loss != .mse { throw err("training.loss", "\(kind) data has real-valued targets: use mse") }
        if kind == "ts" && loss != .crossEntropy { throw err("training.loss", "ts data has class labels: use cross_entropy") }
        if kind == "ts" && output != .lastStep { throw err("model.output", "ts data has one label per sequence: use last_step") }
        if kind == "synthetic" && output != .lastStep { throw err("model.output", "the adding problem has one target per sequence: use last_step") }

        return TrainConfig.Data(kind: DataKind(rawValue: kind)!, path: str("data.path"), column: str("data.column"),
                    validationFraction: dbl("data.validation_fraction") ?? 0, interpolateMissing: bool("data.interpolate_missing") ?? false,
                    task: str("data.task") ?? "", validationPath: str("data.validation_path"),
                    inputs: str("data.inputs"), targets: str("data.targets"),
                    validationInputs: str("data.validation_inputs"), validationTargets: str("data.validation_targets"),
                    shuffle: bool("data.shuffle") ?? true, vocabulary: int("data.vocabulary"), classes: int("data.classes"),
                    lengths: str("data.lengths"), validationLengths: str("data.validation_lengths"),
                    bucketing: bool("data.bucketing") ?? (bool("data.shuffle") ?? true))
    }

    /// model.*: the cell, its settings and the initialization.
    func model() throws -> TrainConfig.Model {
        let cell = CellKind(rawValue: str("model.cell")!)!
        try only(["model.activation", "model.leaky_slope"], when: "model.cell", in: ["rnn"], warn: true)
        try only(["model.leaky_slope"], when: "model.activation", in: ["leaky_relu"])
        try only(["model.init.forget_bias"], when: "model.cell", in: ["lstm"])
        if dbl("model.dropout")! > 0 && int("model.layers")! == 1 {
            throw err("model.dropout", "acts between recurrent layers, and model.layers is 1 (model.head_dropout drops the head's input)")
        }
        if dbl("model.input_dropout")! > 0 && str("data.kind") == "text" && int("model.embedding_size") == nil {
            throw err("model.input_dropout", "applies to dense input or an embedding's output; text without model.embedding_size is one-hot token input")
        }
        if bool("model.bidirectional")! {
            if bool("model.tie_weights")! { throw err("model.tie_weights", "cannot be combined with model.bidirectional: the head reads 2H values per step, the embedding has E") }
        }
        if bool("model.tie_weights")! {
            guard let e = int("model.embedding_size"), e == int("model.hidden_size")! else {
                throw err("model.tie_weights", "needs model.embedding_size equal to model.hidden_size (\(int("model.embedding_size").map(String.init) ?? "null") vs \(int("model.hidden_size")!))")
            }
            if let o = str("model.output"), o != "every_step" { throw err("model.tie_weights", "needs a loss at every step (model.output: every_step), as a language model has") }
        }
        let recurrentInit = str("model.init.recurrent_weights")!
        if recurrentInit == "identity" && cell != .rnn {
            throw err("model.init.recurrent_weights", "identity applies to the Elman cell (model.cell: rnn), not \(cell.rawValue)")
        }
        let initialization = InitSettings(inputWeights: InitSettings.Method(rawValue: str("model.init.input_weights")!)!,
                                          recurrentWeights: InitSettings.Method(rawValue: recurrentInit)!,
                                          headWeights: InitSettings.Method(rawValue: str("model.init.head_weights")!)!,
                                          zeroBiases: str("model.init.biases") == "zeros",
                                          forgetBias: dbl("model.init.forget_bias"))

        return TrainConfig.Model(cell: cell, activation: Activation(rawValue: str("model.activation")!)!, leakySlope: dbl("model.leaky_slope")!,
                      hiddenSize: int("model.hidden_size")!, layers: int("model.layers")!, output: outputMode,
                      learnedInitialState: str("model.initial_state") == "learned",
                      layerNorm: bool("model.layer_norm")!, batchNorm: bool("model.batch_norm")!, initialization: initialization,
                      initFrom: str("model.init_from"), bidirectional: bool("model.bidirectional")!, embeddingSize: int("model.embedding_size"), tieWeights: bool("model.tie_weights")!, dropout: dbl("model.dropout")!, inputDropout: dbl("model.input_dropout")!,
                      headDropout: dbl("model.head_dropout")!, variationalDropout: bool("model.variational_dropout")!)
    }

    /// training.optimizer.*: PyTorch's defaults, and keys that belong to other optimizers ignored
    /// with a warning.
    func optimizer() throws -> OptimizerSettings {
        let optName = str("training.optimizer.name")!
        try only(["training.optimizer.nesterov", "training.optimizer.dampening"], when: "training.optimizer.name", in: ["sgd"], warn: true)
        try only(["training.optimizer.momentum"], when: "training.optimizer.name", in: ["sgd", "rmsprop"], warn: true)
        try only(["training.optimizer.beta1", "training.optimizer.beta2"], when: "training.optimizer.name", in: ["adam", "adamw"], warn: true)
        try only(["training.optimizer.eps"], when: "training.optimizer.name", in: ["adam", "adamw", "rmsprop", "adagrad"], warn: true)
        try only(["training.optimizer.alpha", "training.optimizer.centered"], when: "training.optimizer.name", in: ["rmsprop"], warn: true)
        try only(["training.optimizer.lr_decay", "training.optimizer.initial_accumulator_value"], when: "training.optimizer.name", in: ["adagrad"], warn: true)
        var opt = OptimizerSettings(kind: OptimizerSettings.Kind(rawValue: optName)!)
        setDefault("training.optimizer.learning_rate", .double(OptimizerSettings.defaultLearningRate(opt.kind)))
        setDefault("training.optimizer.weight_decay", .double(OptimizerSettings.defaultWeightDecay(opt.kind)))
        switch opt.kind {
        case .sgd:
            setDefault("training.optimizer.momentum", .double(0))
            setDefault("training.optimizer.nesterov", .bool(false))
            setDefault("training.optimizer.dampening", .double(0))
        case .adam, .adamw:
            setDefault("training.optimizer.beta1", .double(0.9))
            setDefault("training.optimizer.beta2", .double(0.999))
            setDefault("training.optimizer.eps", .double(1e-8))
        case .rmsprop:
            setDefault("training.optimizer.momentum", .double(0))
            setDefault("training.optimizer.alpha", .double(0.99))
            setDefault("training.optimizer.eps", .double(1e-8))
            setDefault("training.optimizer.centered", .bool(false))
        case .adagrad:
            setDefault("training.optimizer.eps", .double(1e-10))
            setDefault("training.optimizer.lr_decay", .double(0))
            setDefault("training.optimizer.initial_accumulator_value", .double(0))
        }
        opt.momentum = dbl("training.optimizer.momentum") ?? 0
        opt.nesterov = bool("training.optimizer.nesterov") ?? false
        opt.dampening = dbl("training.optimizer.dampening") ?? 0
        opt.weightDecay = dbl("training.optimizer.weight_decay") ?? 0
        opt.beta1 = dbl("training.optimizer.beta1") ?? 0.9
        opt.beta2 = dbl("training.optimizer.beta2") ?? 0.999
        opt.eps = dbl("training.optimizer.eps")
        opt.alpha = dbl("training.optimizer.alpha") ?? 0.99
        opt.centered = bool("training.optimizer.centered") ?? false
        opt.lrDecay = dbl("training.optimizer.lr_decay") ?? 0
        opt.initialAccumulator = dbl("training.optimizer.initial_accumulator_value") ?? 0
        if opt.nesterov && (opt.momentum <= 0 || opt.dampening != 0) {
            throw err("training.optimizer.nesterov", "needs momentum > 0 and dampening 0 (as in PyTorch)")
        }
        return opt
    }

    /// training.schedule.*.
    func schedule(steps: Int) throws -> Schedule {
        let schedName = str("training.schedule.name")!
        try only(["training.schedule.step_size"], when: "training.schedule.name", in: ["step", "triangular"], warn: true)
        try only(["training.schedule.gamma"], when: "training.schedule.name", in: ["step", "exponential"], warn: true)
        try only(["training.schedule.warmup_steps"], when: "training.schedule.name", in: ["cosine"], warn: true)
        try only(["training.schedule.min_lr"], when: "training.schedule.name", in: ["cosine", "plateau"], warn: true)
        try only(["training.schedule.max_lr"], when: "training.schedule.name", in: ["triangular"], warn: true)
        try only(["training.schedule.factor", "training.schedule.patience", "training.schedule.threshold", "training.schedule.cooldown"],
                 when: "training.schedule.name", in: ["plateau"], warn: true)
        let schedule: Schedule
        switch schedName {
        case "step":
            guard let size = int("training.schedule.step_size") else { throw err("training.schedule.step_size", "required for the step schedule") }
            setDefault("training.schedule.gamma", .double(0.1))
            schedule = .step(stepSize: size, gamma: dbl("training.schedule.gamma")!)
        case "exponential":
            setDefault("training.schedule.gamma", .double(0.99))
            schedule = .exponential(gamma: dbl("training.schedule.gamma")!)
        case "cosine":
            setDefault("training.schedule.warmup_steps", .int(0))
            setDefault("training.schedule.min_lr", .double(0))
            schedule = .cosine(warmup: int("training.schedule.warmup_steps")!, total: steps, minLR: dbl("training.schedule.min_lr")!)
        case "triangular":
            guard let size = int("training.schedule.step_size") else { throw err("training.schedule.step_size", "required for the triangular schedule") }
            guard let maxLR = dbl("training.schedule.max_lr") else { throw err("training.schedule.max_lr", "required for the triangular schedule") }
            schedule = .triangular(maxLR: maxLR, stepSizeUp: size)
        case "plateau":
            setDefault("training.schedule.factor", .double(0.1))
            setDefault("training.schedule.patience", .int(10))
            setDefault("training.schedule.threshold", .double(1e-4))
            setDefault("training.schedule.cooldown", .int(0))
            setDefault("training.schedule.min_lr", .double(0))
            schedule = .plateau(factor: dbl("training.schedule.factor")!, patience: int("training.schedule.patience")!,
                                threshold: dbl("training.schedule.threshold")!, cooldown: int("training.schedule.cooldown")!,
                                minLR: dbl("training.schedule.min_lr")!)
        default:
            schedule = .constant
        }
        return schedule
    }

    /// training.*: the synchronization mode and the rules between its keys.
    func training() throws -> TrainConfig.Training {
        if bool("training.stateful")! {
            guard str("data.kind") == "text" else { throw err("training.stateful", "needs text data (data.kind: text), which is read as contiguous streams") }
            if let o = str("model.output"), o != "every_step" { throw err("training.stateful", "needs a loss at every step (model.output: every_step)") }
        }
        if bool("model.bidirectional")! {
            if bool("training.stateful")! { throw err("training.stateful", "cannot be combined with model.bidirectional: the backward direction needs the whole sequence") }
            if int("training.bptt_length")! > 0 { throw err("training.bptt_length", "cannot be combined with model.bidirectional: the backward direction needs the whole sequence") }
        }
        if int("training.local_sgd_steps")! > 0 && str("training.compression") != "none" {
            throw err("training.compression", "does not apply with training.local_sgd_steps: local SGD exchanges parameters, not gradients")
        }
        // Reproducible mode: micro-shards replace accumulation, and the exchange is exact.
        var microShards: Int?
        if bool("training.reproducible")! {
            let B = int("training.global_batch_size")!
            if int("training.micro_shards")! == 0 { v["training.micro_shards"] = .int(min(B, 8)) }
            let m = int("training.micro_shards")!
            guard m <= B else { throw err("training.micro_shards", "\(m) micro-shards need at least as many samples, but training.global_batch_size is \(B)") }
            if int("training.accumulate_steps")! > 1 {
                throw err("training.accumulate_steps", "cannot be combined with training.reproducible: the micro-shards already split the batch (set training.micro_shards)")
            }
            if str("training.compression") != "none" {
                throw err("training.compression", "cannot be combined with training.reproducible: the exact exchange sums 64-bit integers")
            }
            if int("training.local_sgd_steps")! > 0 {
                throw err("training.local_sgd_steps", "cannot be combined with training.reproducible: replicas differ between averagings")
            }
            microShards = m
        } else if given.contains("training.micro_shards") {
            warnings.append("\(source): training.micro_shards: ignored: applies only when training.reproducible is true")
        }

        return TrainConfig.Training(loss: lossKind, globalBatchSize: int("training.global_batch_size")!, sequenceLength: int("training.sequence_length")!,
                            steps: int("training.steps")!, optimizer: try optimizer(), learningRate: dbl("training.optimizer.learning_rate")!, schedule: try schedule(steps: int("training.steps")!),
                            clipNorm: dbl("training.clip_norm"), clipValue: dbl("training.clip_value"),
                            averageOverTime: bool("training.average_over_time")!,
                            checkEvery: int("training.check_every")!, evalEvery: int("training.eval_every")!,
                            evalSamples: int("training.eval_samples")!, threads: int("training.threads")!,
                            bucketMB: dbl("training.bucket_mb")!, compression: Compression(rawValue: str("training.compression")!)!, accumulateSteps: int("training.accumulate_steps")!,
                            stateful: bool("training.stateful")!, localSGDSteps: int("training.local_sgd_steps")!, microShards: microShards, bpttLength: int("training.bptt_length")!,
                            skipNonFinite: str("training.on_nonfinite") == "skip", maxSkipped: int("training.max_skipped")!,
                            timeoutSeconds: dbl("training.timeout_seconds")!)
    }

    /// parallel.*: what a pipeline can split, and the combinations it cannot work with.
    func parallel() throws -> TrainConfig.Parallel {
        let S = int("parallel.pipeline_stages")!, k = int("parallel.chunk_steps")!, L = int("model.layers")!
        if S > L { throw err("parallel.pipeline_stages", "\(S) stages need at least as many layers, but model.layers is \(L)") }
        if bool("model.bidirectional")! && (S > 1 || k > 0) {
            throw err(S > 1 ? "parallel.pipeline_stages" : "parallel.chunk_steps", "cannot be combined with model.bidirectional: the backward direction of a layer needs every step of the layer below before its first")
        }
        if bool("model.batch_norm")! && k > 0 {
            throw err("parallel.chunk_steps", "cannot be combined with model.batch_norm: its statistics need the whole sequence before the first step (set 0)")
        }
        if S > 1 && bool("model.tie_weights")! {
            throw err("model.tie_weights", "cannot be combined with parallel.pipeline_stages: the embedding lives on the first stage and the head on the last")
        }
        if S > 1 && int("training.local_sgd_steps")! > 0 {
            throw err("training.local_sgd_steps", "cannot be combined with parallel.pipeline_stages: a replica's stages must update from one gradient")
        }
        var split: [Int]?
        if let text = str("parallel.stage_layers") {
            let parts = text.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
            guard parts.allSatisfy({ $0 != nil && $0! >= 1 }), parts.count == S, parts.reduce(0, { $0 + $1! }) == L else {
                throw err("parallel.stage_layers", "'\(text)' is not \(S) positive layer counts (one per stage of parallel.pipeline_stages) adding up to model.layers \(L)")
            }
            split = parts.map { $0! }
        }
        return TrainConfig.Parallel(pipelineStages: S, chunkSteps: k, stageLayers: split)
    }

    func output() -> TrainConfig.Output {
        TrainConfig.Output(directory: str("output.directory")!, logEvery: int("output.log_every")!,
                             sampleLength: int("output.sample_length")!, sampleTemperature: dbl("output.sample_temperature")!)
    }

    func checkpointing() -> TrainConfig.Checkpointing {
        TrainConfig.Checkpointing(every: int("checkpoint.every")!, keep: int("checkpoint.keep")!,
                                   directory: str("checkpoint.directory") ?? "\(str("output.directory")!)/checkpoints")
    }

    /// Every key with its resolved value in schema order, leaving out the keys of other cells,
    /// optimizers and schedules.
    func listing() -> [(key: String, value: ConfigValue)] {
        let cell = CellKind(rawValue: str("model.cell")!)!, fromFiles = ["npy", "ts"].contains(str("data.kind"))
        var hidden: Set<String> = cell == .rnn ? [] : ["model.activation", "model.leaky_slope"]
        if str("model.activation") != "leaky_relu" { hidden.insert("model.leaky_slope") }
        if cell != .lstm { hidden.insert("model.init.forget_bias") }
        if !bool("training.reproducible")! { hidden.insert("training.micro_shards") }
        if fromFiles { hidden.insert("training.sequence_length") }
        let final = v
        return configSchema.compactMap { s in
            guard let value = final[s.path], !hidden.contains(s.path) else { return nil }
            return (s.path, value)
        }
    }
}
