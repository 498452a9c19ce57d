import Foundation
import RNN

/// A dataset of N fixed sequences held in memory (from .npy files or a .ts file).
///
/// Inputs: token ids (N, T) or features (N, T, I). Targets: classes (N, T) or (N), or values
/// (N, T, O) or (N, O); a per-step target means every_step output, a per-sequence one last_step.
///
/// Order of samples: global position p = step * B + row (row of the global batch). With
/// `shuffle: false`, position p is sample p mod N, in file order. With `shuffle: true`, epoch
/// e = p / N visits the samples in a random permutation seeded by (seed, e). Either way the order
/// depends on (seed, step, row) only, never on the number of ranks.
public final class ArrayDataset: Dataset {
    public enum Inputs { case tokens([Int32], vocabulary: Int), features([Float], width: Int) }
    public enum Targets { case classes([Int32], classes: Int), values([Float], width: Int) }

    public struct Split {
        public let inputs: Inputs
        public let targets: Targets
        public let count: Int
    }

    public let train: Split
    public let validation: Split?
    public let steps: Int
    public let output: OutputMode
    public let shuffle: Bool
    public let seed: UInt64
    public let summary: String
    public let classNames: [String]?
    let maxValidation: Int
    private var permutationCache: (epoch: Int, order: [Int])?
    private let lock = NSLock()

    public init(train: Split, validation: Split?, steps: Int, output: OutputMode, shuffle: Bool, seed: UInt64,
                maxValidation: Int, summary: String, classNames: [String]? = nil) {
        self.train = train
        self.validation = validation
        self.steps = steps
        self.output = output
        self.shuffle = shuffle
        self.seed = seed
        self.maxValidation = maxValidation
        self.summary = summary
        self.classNames = classNames
    }

    public var input: InputKind {
        switch train.inputs {
        case .tokens(_, let v): return .tokens(vocabulary: v)
        case .features(_, let w): return .dense(features: w)
        }
    }
    public var outputSize: Int {
        switch train.targets {
        case .classes(_, let c): return c
        case .values(_, let w): return w
        }
    }
    public var loss: LossKind {
        if case .classes = train.targets { return .crossEntropy }
        return .mse
    }
    public var validationCount: Int { min(validation?.count ?? 0, maxValidation) }

    /// The training sample at global position p.
    func sampleIndex(_ p: Int) -> Int {
        let n = train.count
        guard shuffle else { return p % n }
        let epoch = p / n
        lock.lock()
        defer { lock.unlock() }
        if permutationCache?.epoch != epoch {
            var rng = Xoshiro256(seed: seed, stream: RandomStream.trainingData.rawValue, index: UInt64(epoch))
            var order = Array(0..<n)
            order.shuffle(using: &rng)
            permutationCache = (epoch, order)
        }
        return permutationCache!.order[p % n]
    }

    public func trainingBatch(step: Int, globalBatch: Int, rows: Range<Int>) -> Batch {
        make(train, rows.map { sampleIndex(step * globalBatch + $0) })
    }

    public func validationBatch(_ samples: Range<Int>) -> Batch {
        make(validation!, Array(samples))
    }

    private func make(_ split: Split, _ idx: [Int]) -> Batch {
        let T = steps
        var bb = BatchBuilder(steps: T, batchSize: idx.count)
        switch split.inputs {
        case .tokens(let a, _): bb.setTokens { b, t in a[idx[b] * T + t] }
        case .features(let a, let w): bb.setFeatures(width: w) { b, t, i in a[(idx[b] * T + t) * w + i] }
        }
        let rows = output == .everyStep ? T : 1
        switch split.targets {
        case .classes(let a, _): bb.setClassTargets(rows: rows) { b, t in a[idx[b] * rows + t] }
        case .values(let a, let w): bb.setValueTargets(rows: rows, width: w) { b, t, o in a[(idx[b] * rows + t) * w + o] }
        }
        return bb.batch
    }
}

extension ArrayDataset {
    /// Loads inputs.npy and targets.npy (and optional validation files), checking every shape.
    /// - Parameters: vocabulary / classes: nil to use max + 1 of the ids found.
    public static func fromNumpy(inputs: String, targets: String, validationInputs: String?, validationTargets: String?,
                                 validationFraction: Double, shuffle: Bool, seed: UInt64, maxValidation: Int,
                                 vocabulary: Int?, classes: Int?) throws -> ArrayDataset {
        let x = try NumpyArray.read(path: inputs)
        let y = try NumpyArray.read(path: targets)
        guard x.shape.count == 2 || x.shape.count == 3 else {
            throw DataError("\(inputs): inputs must have shape (N, T) of token ids or (N, T, I) of floats, got \(x.shape)")
        }
        let n = x.shape[0], T = x.shape[1]
        guard n > 0, T > 0 else { throw DataError("\(inputs): no samples (shape \(x.shape))") }
        if x.shape.count == 2 && !x.isInteger { throw DataError("\(inputs): (N, T) inputs must be integer token ids; give float features as (N, T, I)") }
        if x.shape.count == 3 && x.isInteger { throw DataError("\(inputs): (N, T, I) inputs must be floats") }
        guard y.shape.first == n else { throw DataError("\(targets): has \(y.shape.first ?? 0) samples, inputs have \(n)") }
        let perStep = y.shape.count >= 2 && y.shape[1] == T && (y.shape.count == 3 || y.isInteger || y.shape.count == 2)
        let output: OutputMode
        switch (y.shape.count, y.isInteger) {
        case (1, _): output = .lastStep
        case (2, true): guard y.shape[1] == T else { throw DataError("\(targets): integer targets must be (N,) or (N, T) with T = \(T), got \(y.shape)") }; output = .everyStep
        case (2, false): output = perStep && y.shape[1] == T ? .everyStep : .lastStep
        case (3, false): guard y.shape[1] == T else { throw DataError("\(targets): (N, T, O) targets need T = \(T), got \(y.shape)") }; output = .everyStep
        default: throw DataError("\(targets): targets must have shape (N,), (N, O), (N, T) or (N, T, O), got \(y.shape)")
        }
        // Ambiguity: float (N, T) with O = T is read as per-step values (every_step, O = 1).
        var vocab = vocabulary, nClasses = classes
        func makeInputs(_ a: NumpyArray, _ name: String) throws -> Inputs {
            switch a.values {
            case .int(let ids):
                let v = vocab ?? Int((ids.max() ?? 0) + 1)
                vocab = v
                if let bad = ids.first(where: { $0 < 0 || Int($0) >= v }) { throw DataError("\(name): token id \(bad) outside 0..<\(v) (data.vocabulary)") }
                return .tokens(ids, vocabulary: v)
            case .float(let f):
                try requireFinite(f, shape: a.shape, name)
                return .features(f, width: a.shape[2])
            }
        }
        func targetsOf(_ a: NumpyArray, _ name: String) throws -> Targets {
            switch a.values {
            case .int(let c):
                let k = nClasses ?? Int((c.max() ?? 0) + 1)
                nClasses = k
                if let bad = c.first(where: { $0 < 0 || Int($0) >= k }) { throw DataError("\(name): class id \(bad) outside 0..<\(k) (data.classes)") }
                return .classes(c, classes: k)
            case .float(let f):
                try requireFinite(f, shape: a.shape, name)
                let width = output == .everyStep ? (a.shape.count == 3 ? a.shape[2] : 1) : (a.shape.count == 2 ? a.shape[1] : 1)
                return .values(f, width: width)
            }
        }
        var xi = try makeInputs(x, inputs)
        var yt = try targetsOf(y, targets)
        var trainSplit = Split(inputs: xi, targets: yt, count: n)
        var validation: Split?
        if let vi = validationInputs, let vt = validationTargets {
            let vx = try NumpyArray.read(path: vi), vy = try NumpyArray.read(path: vt)
            guard Array(vx.shape.dropFirst()) == Array(x.shape.dropFirst()), vx.isInteger == x.isInteger else {
                throw DataError("\(vi): shape \(vx.shape) does not match the training inputs \(x.shape)")
            }
            guard vy.shape.first == vx.shape[0], Array(vy.shape.dropFirst()) == Array(y.shape.dropFirst()), vy.isInteger == y.isInteger else {
                throw DataError("\(vt): shape \(vy.shape) does not match the training targets \(y.shape)")
            }
            validation = Split(inputs: try makeInputs(vx, vi), targets: try targetsOf(vy, vt), count: vx.shape[0])
        } else if validationFraction > 0 {
            let nv = Int((Double(n) * validationFraction).rounded(.down))
            let nt = n - nv
            guard nt > 0 else { throw DataError("\(inputs): validation_fraction \(validationFraction) leaves no training samples") }
            if nv > 0 {
                (trainSplit, validation) = split(trainSplit, at: nt, steps: T, output: output)
            }
        }
        xi = trainSplit.inputs
        yt = trainSplit.targets
        let kind = x.isInteger ? "token ids, vocabulary \(vocab!)" : "\(x.shape[2]) features"
        let target = y.isInteger ? "\(nClasses!) classes" : "values"
        return ArrayDataset(train: trainSplit, validation: validation, steps: T, output: output, shuffle: shuffle, seed: seed,
                            maxValidation: maxValidation,
                            summary: "npy \(inputs): \(trainSplit.count) training and \(validation?.count ?? 0) validation sequences of T=\(T), \(kind), \(target) \(output == .everyStep ? "per step" : "per sequence")")
    }

    /// The first `at` samples and the rest.
    static func split(_ s: Split, at: Int, steps T: Int, output: OutputMode) -> (Split, Split) {
        let rows = output == .everyStep ? T : 1
        func cut<E>(_ a: [E], _ per: Int) -> ([E], [E]) { (Array(a[0..<(at * per)]), Array(a[(at * per)...])) }
        let (ia, ib): (Inputs, Inputs)
        switch s.inputs {
        case .tokens(let a, let v): let (p, q) = cut(a, T); (ia, ib) = (.tokens(p, vocabulary: v), .tokens(q, vocabulary: v))
        case .features(let a, let w): let (p, q) = cut(a, T * w); (ia, ib) = (.features(p, width: w), .features(q, width: w))
        }
        let (ta, tb): (Targets, Targets)
        switch s.targets {
        case .classes(let a, let c): let (p, q) = cut(a, rows); (ta, tb) = (.classes(p, classes: c), .classes(q, classes: c))
        case .values(let a, let w): let (p, q) = cut(a, rows * w); (ta, tb) = (.values(p, width: w), .values(q, width: w))
        }
        return (Split(inputs: ia, targets: ta, count: at), Split(inputs: ib, targets: tb, count: s.count - at))
    }

    /// Reads a sktime/UEA .ts file (equal-length, no timestamps): "@" header lines, then one line
    /// per sequence, "d1v1,d1v2,...:d2v1,...:...:label". Returns features (N, T, D) and class ids
    /// in the order of @classLabel.
    public static func readTS(path: String) throws -> (features: [Float], n: Int, T: Int, D: Int, labels: [Int32], classNames: [String]) {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw DataError(FileManager.default.fileExists(atPath: path) ? "\(path): cannot read the file" : "\(path): no such file")
        }
        guard let text = String(data: data, encoding: .utf8) else { throw DataError("\(path): not valid UTF-8 text") }
        var classNames: [String] = []
        var inData = false
        var features: [Float] = []
        var labels: [Int32] = []
        var T = -1, D = -1
        for (no, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.trimmingCharacters(in: .whitespacesAndNewlines)
            if line.isEmpty || line.hasPrefix("#") { continue }
            if !inData {
                let lower = line.lowercased()
                if lower.hasPrefix("@classlabel") {
                    let parts = line.split(separator: " ").map(String.init)
                    guard parts.count >= 3, parts[1].lowercased() == "true" else { throw DataError("\(path):\(no + 1): expected '@classLabel true <labels>'") }
                    classNames = Array(parts[2...])
                } else if lower.hasPrefix("@timestamps true") {
                    throw DataError("\(path):\(no + 1): series with timestamps are not supported")
                } else if lower.hasPrefix("@data") {
                    inData = true
                }
                continue
            }
            let dims = line.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            guard dims.count >= 2, let label = classNames.firstIndex(of: dims.last!.trimmingCharacters(in: .whitespaces)) else {
                throw DataError("\(path):\(no + 1): expected dimensions separated by ':' and a class label from @classLabel")
            }
            let series = try dims.dropLast().map { d -> [Float] in
                try d.split(separator: ",").map { v in
                    guard let f = Float(v.trimmingCharacters(in: .whitespaces)), f.isFinite else { throw DataError("\(path):\(no + 1): '\(v)' is not a number") }
                    return f
                }
            }
            if D < 0 { D = series.count; T = series[0].count }
            guard series.count == D, series.allSatisfy({ $0.count == T }), T > 0 else {
                throw DataError("\(path):\(no + 1): every sequence needs \(D) dimensions of \(T) values (unequal lengths are not supported)")
            }
            for t in 0..<T { for d in 0..<D { features.append(series[d][t]) } }
            labels.append(Int32(label))
        }
        guard !labels.isEmpty else { throw DataError("\(path): no sequences after @data") }
        return (features, labels.count, T, D, labels, classNames)
    }

    /// A sequence-classification dataset from .ts files: many-to-one, features z-scored per
    /// channel with the training file's statistics.
    public static func fromTS(path: String, validationPath: String?, shuffle: Bool, seed: UInt64, maxValidation: Int) throws -> ArrayDataset {
        let tr = try readTS(path: path)
        var mean = [Double](repeating: 0, count: tr.D), sq = [Double](repeating: 0, count: tr.D)
        for i in 0..<(tr.n * tr.T) { for d in 0..<tr.D { let v = Double(tr.features[i * tr.D + d]); mean[d] += v; sq[d] += v * v } }
        let m = Double(tr.n * tr.T)
        let std = (0..<tr.D).map { d -> Double in let v = sq[d] / m - (mean[d] / m) * (mean[d] / m); return v > 0 ? v.squareRoot() : 1 }
        mean = mean.map { $0 / m }
        func normalize(_ f: [Float]) -> [Float] { f.enumerated().map { Float((Double($1) - mean[$0 % tr.D]) / std[$0 % tr.D]) } }
        let train = Split(inputs: .features(normalize(tr.features), width: tr.D), targets: .classes(tr.labels, classes: tr.classNames.count), count: tr.n)
        var validation: Split?
        if let vp = validationPath {
            let va = try readTS(path: vp)
            guard va.T == tr.T, va.D == tr.D, va.classNames == tr.classNames else {
                throw DataError("\(vp): has \(va.D) dimensions of length \(va.T) and classes \(va.classNames); \(path) has \(tr.D) of \(tr.T) and \(tr.classNames)")
            }
            validation = Split(inputs: .features(normalize(va.features), width: va.D), targets: .classes(va.labels, classes: va.classNames.count), count: va.n)
        }
        return ArrayDataset(train: train, validation: validation, steps: tr.T, output: .lastStep, shuffle: shuffle, seed: seed,
                            maxValidation: maxValidation,
                            summary: "ts \(path): \(tr.n) training and \(validation?.count ?? 0) validation sequences of T=\(tr.T), \(tr.D) channels, classes \(tr.classNames.joined(separator: ", "))",
                            classNames: tr.classNames)
    }
}

/// A NaN or infinity in float data is found at load, named by file and index, not at step 2 as a
/// non-finite loss.
func requireFinite(_ values: [Float], shape: [Int], _ name: String) throws {
    guard let i = values.firstIndex(where: { !$0.isFinite }) else { return }
    var index: [Int] = [], rest = i
    for d in shape.reversed() { index.append(rest % max(d, 1)); rest /= max(d, 1) }
    throw DataError("\(name): value \(values[i]) at index \(Array(index.reversed())) is not finite (\(values.filter { !$0.isFinite }.count) such values): clean the data")
}
