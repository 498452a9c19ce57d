import Foundation
import RNN
import Yams

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
let configSchema: [KeySpec] = [
    KeySpec("seed", .int(min: 0), .int(1234), "seed of every random stream (parameters, data order, sampling)"),
    KeySpec("data.kind", .choice(["text", "csv", "synthetic"]), nil, "text: character LM; csv: a numeric column as a series; synthetic: generated task"),
    KeySpec("data.path", .string, nil, "input file (text, csv)"),
    KeySpec("data.column", .intOrString, nil, "csv: column name or 0-based index (default: the second of two columns)"),
    KeySpec("data.validation_fraction", .double(min: 0, max: 1, maxExclusive: true), .double(0.1), "the last fraction of the file used for validation (text, csv)"),
    KeySpec("data.interpolate_missing", .bool, nil, "csv: fill empty values by linear interpolation instead of failing"),
    KeySpec("data.task", .choice(["adding"]), nil, "synthetic: the task (adding problem)"),
    KeySpec("data.length", .int(min: 2), nil, "synthetic: sequence length (default training.sequence_length)"),
    KeySpec("model.cell", .choice(CellKind.allCases.map(\.rawValue)), .string("rnn"), "recurrent cell"),
    KeySpec("model.activation", .choice(Activation.allCases.map(\.rawValue)), .string("tanh"), "Elman cell activation"),
    KeySpec("model.hidden_size", .int(min: 1), .int(128), "H: hidden units per layer"),
    KeySpec("model.layers", .int(min: 1, max: 64), .int(1), "L: stacked recurrent layers"),
    KeySpec("model.output", .choice(OutputMode.allCases.map(\.rawValue)), nil, "every_step (many-to-many) or last_step (many-to-one); default every_step for text, last_step otherwise"),
    KeySpec("training.loss", .choice(LossKind.allCases.map(\.rawValue)), nil, "default cross_entropy for text, mse otherwise"),
    KeySpec("training.global_batch_size", .int(min: 1), .int(32), "B: samples per step summed over all ranks"),
    KeySpec("training.sequence_length", .int(min: 1), .int(64), "T: time steps per sample (text, csv)"),
    KeySpec("training.steps", .int(min: 0), .int(1000), "optimizer steps"),
    KeySpec("training.optimizer.name", .choice(["sgd"]), .string("sgd"), "optimizer"),
    KeySpec("training.optimizer.learning_rate", .double(min: 0, minExclusive: true), .double(0.01), "learning rate"),
    KeySpec("training.optimizer.momentum", .double(min: 0, max: 1, maxExclusive: true), .double(0), "SGD momentum"),
    KeySpec("training.clip_norm", .double(min: 0, minExclusive: true), .null, nullable: true, "clip the gradient to this global L2 norm (null: off)"),
    KeySpec("training.average_over_time", .bool, .bool(true), "divide gradients accumulated over time steps by T"),
    KeySpec("training.check_every", .int(min: 0), .int(100), "compare a parameter checksum across ranks every N steps (0: only at start and end)"),
    KeySpec("training.eval_every", .int(min: 0), .int(0), "validation loss every N steps (0: only at the end)"),
    KeySpec("training.eval_samples", .int(min: 0), .int(512), "at most this many validation samples"),
    KeySpec("training.threads", .int(min: 0), .int(0), "BLAS threads per rank (0: cores / ranks on the node)"),
    KeySpec("output.directory", .string, .string("runs/default"), "where metrics.jsonl and model.safetensors go"),
    KeySpec("output.log_every", .int(min: 1), .int(10), "print and record a metrics line every N steps"),
    KeySpec("output.sample_length", .int(min: 0), .int(0), "text: characters to generate at the end (0: none)"),
    KeySpec("output.sample_temperature", .double(min: 0, minExclusive: true), .double(0.8), "text: sampling temperature"),
]

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

    static func childKeys(of section: String) -> String {
        configSchema.filter { $0.path.hasPrefix(section + ".") }.map { String($0.path.dropFirst(section.count + 1)) }.joined(separator: ", ")
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

/// The resolved, validated configuration of a training run.
public struct TrainConfig: Sendable {
    public struct Data: Sendable {
        public var kind: String
        public var path: String?
        public var column: String?
        public var validationFraction: Double
        public var interpolateMissing: Bool
        public var task: String
        public var length: Int
    }
    public struct Model: Sendable {
        public var cell: CellKind
        public var activation: Activation
        public var hiddenSize: Int
        public var layers: Int
        public var output: OutputMode
    }
    public struct Training: Sendable {
        public var loss: LossKind
        public var globalBatchSize: Int
        public var sequenceLength: Int
        public var steps: Int
        public var optimizer: String
        public var learningRate: Double
        public var momentum: Double
        public var clipNorm: Double?
        public var averageOverTime: Bool
        public var checkEvery: Int
        public var evalEvery: Int
        public var evalSamples: Int
        public var threads: Int
    }
    public struct Output: Sendable {
        public var directory: String
        public var logEvery: Int
        public var sampleLength: Int
        public var sampleTemperature: Double
    }

    public var seed: UInt64
    public var data: Data
    public var model: Model
    public var training: Training
    public var output: Output
    /// Every key with its resolved value, in schema order (printed at start, stored in files).
    public let resolved: [(key: String, value: ConfigValue)]
    public let source: String

    init(values: [String: ConfigValue], given: Set<String>, source: String) throws {
        func err(_ key: String, _ msg: String) -> RNNDPError { RNNDPError("\(source): \(key): \(msg)", collective: true) }
        func int(_ k: String) -> Int { if case .int(let v)? = values[k] { return v }; return 0 }
        func dbl(_ k: String) -> Double? {
            switch values[k] { case .double(let v)?: return v; case .int(let v)?: return Double(v); default: return nil }
        }
        func str(_ k: String) -> String? { if case .string(let v)? = values[k] { return v }; return nil }
        func bool(_ k: String) -> Bool? { if case .bool(let v)? = values[k] { return v }; return nil }

        guard let kind = str("data.kind") else { throw err("data.kind", "required (text, csv or synthetic)") }
        var vals = values
        // Keys that belong to one data kind only.
        let only: [(String, String)] = [("data.column", "csv"), ("data.interpolate_missing", "csv"), ("data.task", "synthetic"), ("data.length", "synthetic")]
        for (key, k) in only where given.contains(key) && kind != k {
            throw err(key, "applies only when data.kind is \(k) (it is \(kind))")
        }
        if given.contains("data.path") && kind == "synthetic" { throw err("data.path", "not used when data.kind is synthetic") }
        if kind != "synthetic" && str("data.path") == nil { throw err("data.path", "required when data.kind is \(kind)") }
        // Defaults that depend on the data kind.
        if vals["model.output"] == nil { vals["model.output"] = .string(kind == "text" ? "every_step" : "last_step") }
        if vals["training.loss"] == nil { vals["training.loss"] = .string(kind == "text" ? "cross_entropy" : "mse") }
        if kind == "synthetic" {
            if vals["data.task"] == nil { vals["data.task"] = .string("adding") }
            if vals["data.length"] == nil { vals["data.length"] = .int(int("training.sequence_length")) }
        }
        if kind == "csv" && vals["data.interpolate_missing"] == nil { vals["data.interpolate_missing"] = .bool(false) }
        let loss = LossKind(rawValue: { if case .string(let s)? = vals["training.loss"] { return s }; return "" }())!
        let output = OutputMode(rawValue: { if case .string(let s)? = vals["model.output"] { return s }; return "" }())!
        if kind == "text" && loss != .crossEntropy { throw err("training.loss", "text data predicts characters: use cross_entropy") }
        if kind != "text" && loss != .mse { throw err("training.loss", "\(kind) data has real-valued targets: use mse") }
        if kind == "synthetic" && output != .lastStep { throw err("model.output", "the adding problem has one target per sequence: use last_step") }

        seed = UInt64(int("seed"))
        data = Data(kind: kind, path: str("data.path"), column: str("data.column"),
                    validationFraction: dbl("data.validation_fraction") ?? 0.1,
                    interpolateMissing: { if case .bool(let b)? = vals["data.interpolate_missing"] { return b }; return false }(),
                    task: { if case .string(let s)? = vals["data.task"] { return s }; return "adding" }(),
                    length: { if case .int(let v)? = vals["data.length"] { return v }; return int("training.sequence_length") }())
        model = Model(cell: CellKind(rawValue: str("model.cell")!)!, activation: Activation(rawValue: str("model.activation")!)!,
                      hiddenSize: int("model.hidden_size"), layers: int("model.layers"), output: output)
        training = Training(loss: loss, globalBatchSize: int("training.global_batch_size"),
                            sequenceLength: kind == "synthetic" ? { if case .int(let v)? = vals["data.length"] { return v }; return 0 }() : int("training.sequence_length"),
                            steps: int("training.steps"), optimizer: str("training.optimizer.name")!,
                            learningRate: dbl("training.optimizer.learning_rate")!, momentum: dbl("training.optimizer.momentum")!,
                            clipNorm: dbl("training.clip_norm"), averageOverTime: bool("training.average_over_time")!,
                            checkEvery: int("training.check_every"), evalEvery: int("training.eval_every"),
                            evalSamples: int("training.eval_samples"), threads: int("training.threads"))
        self.output = Output(directory: str("output.directory")!, logEvery: int("output.log_every"),
                             sampleLength: int("output.sample_length"), sampleTemperature: dbl("output.sample_temperature")!)
        resolved = configSchema.compactMap { s in vals[s.path].map { (s.path, $0) } }
        self.source = source
    }

    /// The resolved config as YAML-like "key: value" lines (stored in safetensors metadata).
    public var resolvedText: String {
        resolved.map { "\($0.key): \($0.value)" }.joined(separator: "\n")
    }
}
