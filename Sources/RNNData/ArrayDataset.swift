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
///
/// Sequences of different lengths (`lengths`: a .ts file with unequal lengths, or npy inputs
/// padded to a common T with a lengths file) make packed batches (see Batch). With shuffling and
/// `bucketing`, epoch e cuts its permutation into pools of `poolBatches` batches, sorts each pool
/// by length and cuts it into batches of similar lengths, whose order within the epoch is
/// shuffled too (little padding, still a random visit). Each global batch, sorted longest first,
/// is then dealt to `parts` shards (the ranks, or reproducible mode's micro-shards) so that
/// every shard gets about the same number of time steps: longest-processing-time first, every
/// sample to the shard with the fewest steps so far that has room. Global row r of the batch is
/// the r-th of the dealt order; its dropout identity (Batch.rowKeys) is its place in the sorted
/// batch, which does not depend on `parts`.
public final class ArrayDataset: Dataset {
    public enum Inputs { case tokens([Int32], vocabulary: Int), features([Float], width: Int) }
    public enum Targets { case classes([Int32], classes: Int), values([Float], width: Int) }

    public struct Split {
        public let inputs: Inputs
        public let targets: Targets
        public let count: Int
        /// (count): each sample's length, the arrays padded to T; nil: every sample has T steps.
        public var lengths: [Int32]? = nil
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
    /// Length-bucketed batches (with shuffling and unequal lengths), and batches per pool.
    public let bucketing: Bool
    public static let poolBatches = 32
    /// How many shards each global batch is dealt to, balancing their time steps (unequal lengths
    /// only): the number of ranks, or of micro-shards in reproducible mode. Set by the trainer
    /// before the first batch; 1 (no dealing) by default.
    public var parts = 1
    private var bucketCache: (epoch: Int, globalBatch: Int, batches: [[Int]])?
    private var dealtCache: (step: Int, globalBatch: Int, parts: Int, samples: [Int], keys: [Int])?

    public init(train: Split, validation: Split?, steps: Int, output: OutputMode, shuffle: Bool, seed: UInt64,
                maxValidation: Int, summary: String, classNames: [String]? = nil, bucketing: Bool = true) {
        self.bucketing = bucketing
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

    /// Whether the training samples' lengths differ.
    public var variableLength: Bool { train.lengths != nil }

    func length(_ split: Split, _ i: Int) -> Int { split.lengths.map { Int($0[i]) } ?? steps }

    /// Training samples longest first, ties in their given order (Batch.longestFirst).
    func longestFirst(_ samples: [Int]) -> [Int] {
        Batch.longestFirst(samples.map { length(train, $0) }).map { samples[$0] }
    }

    public func trainingBatch(step: Int, globalBatch: Int, rows: Range<Int>) -> Batch {
        guard variableLength else { return make(train, rows.map { sampleIndex(step * globalBatch + $0) }) }
        let (samples, keys) = dealt(step: step, globalBatch: globalBatch)
        return make(train, Array(samples[rows]), rowKeys: Array(keys[rows]))
    }

    public func validationBatch(_ samples: Range<Int>) -> Batch {
        make(validation!, Array(samples))
    }

    /// The samples of step `step`'s global batch in no particular order: B consecutive positions
    /// of the epoch order, or (bucketing) batch `step mod batchesPerEpoch` of its epoch.
    func members(step: Int, globalBatch B: Int) -> [Int] {
        guard shuffle && bucketing && variableLength else { return (0..<B).map { sampleIndex(step * B + $0) } }
        lock.lock()
        defer { lock.unlock() }
        return bucketedMembers(step: step, globalBatch: B)
    }

    /// members() of bucketed sampling; the caller holds `lock`.
    private func bucketedMembers(step: Int, globalBatch B: Int) -> [Int] {
        let n = train.count, perEpoch = (n + B - 1) / B
        let epoch = step / perEpoch
        if bucketCache?.epoch != epoch || bucketCache?.globalBatch != B {
            // The epoch's permutation (the one sampleIndex visits), wrapped round (as often as a
            // batch larger than the data needs) to fill its last batch.
            var rng = Xoshiro256(seed: seed, stream: RandomStream.trainingData.rawValue, index: UInt64(epoch))
            var permutation = Array(0..<n)
            permutation.shuffle(using: &rng)
            let order = (0..<(perEpoch * B)).map { permutation[$0 % n] }
            var batches: [[Int]] = []
            let pool = Self.poolBatches * B
            for start in stride(from: 0, to: order.count, by: pool) {
                // Longest first; ties keep the permutation's order, so the pool stays random within a length.
                let sorted = longestFirst(Array(order[start..<min(start + pool, order.count)]))
                for b in stride(from: 0, to: sorted.count, by: B) { batches.append(Array(sorted[b..<(b + B)])) }
            }
            var orderRng = Xoshiro256(seed: seed, stream: RandomStream.batchOrder.rawValue, index: UInt64(epoch))
            batches.shuffle(using: &orderRng)
            bucketCache = (epoch, B, batches)
        }
        return bucketCache!.batches[step % perEpoch]
    }

    /// Step `step`'s global batch dealt to `parts` shards (see the type's documentation): the
    /// samples in dealt order, and each one's place in the batch sorted longest first.
    func dealt(step: Int, globalBatch B: Int) -> (samples: [Int], keys: [Int]) {
        lock.lock()
        if let c = dealtCache, c.step == step, c.globalBatch == B, c.parts == parts { lock.unlock(); return (c.samples, c.keys) }
        lock.unlock()
        let sorted = longestFirst(members(step: step, globalBatch: B))
        let P = max(1, min(parts, B))
        var shards = [[Int]](repeating: [], count: P), load = [Int](repeating: 0, count: P)
        let room = (0..<P).map { p in (p + 1) * B / P - p * B / P }  // Shard.rows's sizes
        for (key, sample) in sorted.enumerated() {
            var best = -1
            for p in 0..<P where shards[p].count < room[p] && (best < 0 || load[p] < load[best]) { best = p }
            shards[best].append(key)
            load[best] += length(train, sample)
        }
        let keys = shards.flatMap { $0 }
        let result = (keys.map { sorted[$0] }, keys)
        lock.lock()
        dealtCache = (step, B, parts, result.0, result.1)
        lock.unlock()
        return result
    }

    /// For the metrics of step `step` (unequal lengths only): the padding a padded global batch
    /// would carry, 1 - sum(lengths) / (B * longest), and the imbalance of the dealt shards'
    /// time steps, max / mean - 1 (0 when every shard has the same).
    public func balance(step: Int, globalBatch B: Int) -> (padding: Double, imbalance: Double)? {
        guard variableLength else { return nil }
        let samples = dealt(step: step, globalBatch: B).samples
        let lengths = samples.map { length(train, $0) }
        let total = lengths.reduce(0, +), longest = lengths.max() ?? 1
        let P = max(1, min(parts, B))
        let perShard = (0..<P).map { p in lengths[(p * B / P)..<((p + 1) * B / P)].reduce(0, +) }
        let mean = Double(total) / Double(P)
        return (1 - Double(total) / Double(B * longest), Double(perShard.max() ?? 0) / mean - 1)
    }

    private func make(_ split: Split, _ idx: [Int], rowKeys: [Int] = []) -> Batch {
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
        guard split.lengths != nil else { return bb.batch }
        let p = bb.batch
        var (packed, order) = Batch.packing(lengths: idx.map { length(split, $0) }, steps: T, tokens: p.tokens, features: p.features,
                                            featureWidth: input.width, targetClasses: p.targetClasses, targetValues: p.targetValues,
                                            targetWidth: outputSize, everyStep: output == .everyStep)
        if !rowKeys.isEmpty { packed.rowKeys = order.map { rowKeys[$0] } }
        return packed
    }
}

extension ArrayDataset {
    /// Loads inputs.npy and targets.npy (and optional validation files), checking every shape.
    /// - Parameters: vocabulary / classes: nil to use max + 1 of the ids found.
    /// - lengths, validationLengths: (N,) integer .npy files of each sample's length in 1...T,
    ///   the arrays padded to T (what lies beyond a sample's length is never read).
    public static func fromNumpy(inputs: String, targets: String, validationInputs: String?, validationTargets: String?,
                                 validationFraction: Double, shuffle: Bool, seed: UInt64, maxValidation: Int,
                                 vocabulary: Int?, classes: Int?, lengths: String? = nil, validationLengths: String? = nil,
                                 bucketing: Bool = true) throws -> ArrayDataset {
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
        func lengthsOf(_ path: String?, samples: Int, _ name: String) throws -> [Int32]? {
            guard let path else { return nil }
            let a = try NumpyArray.read(path: path)
            guard a.shape == [samples], a.isInteger, case .int(let l) = a.values else {
                throw DataError("\(path): lengths must be an (N,) integer array with N = \(samples) (the samples of \(name)), got shape \(a.shape)")
            }
            if let (i, bad) = l.enumerated().first(where: { $0.element < 1 || Int($0.element) > T }) {
                throw DataError("\(path): length \(bad) of sample \(i) is outside 1...\(T) (the inputs' T)")
            }
            return l
        }
        if (lengths == nil) != (validationLengths == nil) && validationInputs != nil {
            throw DataError("\(lengths ?? validationLengths!): give lengths for both the training and the validation inputs, or for neither")
        }
        let trainLengths = try lengthsOf(lengths, samples: n, inputs)
        var xi = try makeInputs(clearingPadding(x, trainLengths), inputs)
        var yt = try targetsOf(output == .everyStep ? clearingPadding(y, trainLengths) : y, targets)
        var trainSplit = Split(inputs: xi, targets: yt, count: n, lengths: trainLengths)
        var validation: Split?
        if let vi = validationInputs, let vt = validationTargets {
            let vx = try NumpyArray.read(path: vi), vy = try NumpyArray.read(path: vt)
            guard Array(vx.shape.dropFirst()) == Array(x.shape.dropFirst()), vx.isInteger == x.isInteger else {
                throw DataError("\(vi): shape \(vx.shape) does not match the training inputs \(x.shape)")
            }
            guard vy.shape.first == vx.shape[0], Array(vy.shape.dropFirst()) == Array(y.shape.dropFirst()), vy.isInteger == y.isInteger else {
                throw DataError("\(vt): shape \(vy.shape) does not match the training targets \(y.shape)")
            }
            let vl = try lengthsOf(validationLengths, samples: vx.shape[0], vi)
            validation = Split(inputs: try makeInputs(clearingPadding(vx, vl), vi),
                               targets: try targetsOf(output == .everyStep ? clearingPadding(vy, vl) : vy, vt), count: vx.shape[0], lengths: vl)
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
        let shape = trainSplit.lengths.map { "lengths \($0.min()!)..\(T)" } ?? "T=\(T)"
        return ArrayDataset(train: trainSplit, validation: validation, steps: T, output: output, shuffle: shuffle, seed: seed,
                            maxValidation: maxValidation,
                            summary: "npy \(inputs): \(trainSplit.count) training and \(validation?.count ?? 0) validation sequences of \(shape), \(kind), \(target) \(output == .everyStep ? "per step" : "per sequence")",
                            bucketing: bucketing)
    }

    /// `a` (N, T, ...) with zeros past each sample's length: padding is never read, so its values
    /// (PyTorch's ignore_index -100, NaN) must not fail the checks of ids and values or widen
    /// the vocabulary. Unchanged without lengths.
    static func clearingPadding(_ a: NumpyArray, _ lengths: [Int32]?) -> NumpyArray {
        guard let lengths, a.shape.count >= 2 else { return a }
        let T = a.shape[1], inner = a.shape.dropFirst(2).reduce(1, *)
        func clear<E>(_ v: inout [E], _ zero: E) {
            for (i, l) in lengths.enumerated() { for j in ((i * T + Int(l)) * inner)..<((i + 1) * T * inner) { v[j] = zero } }
        }
        var out = a
        switch a.values {
        case .int(var v): clear(&v, 0); out.values = .int(v)
        case .float(var v): clear(&v, 0); out.values = .float(v)
        }
        return out
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
        let la = s.lengths.map { Array($0[0..<at]) }, lb = s.lengths.map { Array($0[at...]) }
        return (Split(inputs: ia, targets: ta, count: at, lengths: la), Split(inputs: ib, targets: tb, count: s.count - at, lengths: lb))
    }

    /// Reads a sktime/UEA .ts file (no timestamps): "@" header lines, then one line per sequence,
    /// "d1v1,d1v2,...:d2v1,...:...:label", every dimension of a sequence of the same length.
    /// Returns features (N, T, D), padded with zeros to the longest length T, each sequence's
    /// length (nil when all are T), and class ids in the order of @classLabel.
    public static func readTS(path: String) throws -> (features: [Float], n: Int, T: Int, D: Int, labels: [Int32], classNames: [String], lengths: [Int32]?) {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw DataError(FileManager.default.fileExists(atPath: path) ? "\(path): cannot read the file" : "\(path): no such file")
        }
        guard let text = String(data: data, encoding: .utf8) else { throw DataError("\(path): not valid UTF-8 text") }
        var classNames: [String] = []
        var inData = false
        var sequences: [[[Float]]] = []  // per sequence, per dimension, its values
        var labels: [Int32] = []
        var D = -1
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
            if D < 0 { D = series.count }
            guard series.count == D else { throw DataError("\(path):\(no + 1): has \(series.count) dimensions, the first sequence \(D)") }
            guard series[0].count > 0, series.allSatisfy({ $0.count == series[0].count }) else {
                throw DataError("\(path):\(no + 1): the dimensions of a sequence need the same number of values, got \(series.map(\.count))")
            }
            sequences.append(series)
            labels.append(Int32(label))
        }
        guard !labels.isEmpty else { throw DataError("\(path): no sequences after @data") }
        let lengths = sequences.map { Int32($0[0].count) }
        let T = Int(lengths.max()!)
        var features = [Float](repeating: 0, count: sequences.count * T * D)
        for (i, series) in sequences.enumerated() {
            for t in 0..<series[0].count { for d in 0..<D { features[(i * T + t) * D + d] = series[d][t] } }
        }
        return (features, labels.count, T, D, labels, classNames, lengths.allSatisfy { Int($0) == T } ? nil : lengths)
    }

    /// A sequence-classification dataset from .ts files: many-to-one, features z-scored per
    /// channel with the statistics of the training file's valid steps. Unequal lengths (in either
    /// file) make a variable-length dataset padded to the longest sequence of both.
    public static func fromTS(path: String, validationPath: String?, shuffle: Bool, seed: UInt64, maxValidation: Int,
                              bucketing: Bool = true) throws -> ArrayDataset {
        let tr = try readTS(path: path)
        let va = try validationPath.map { try readTS(path: $0) }
        if let va, let vp = validationPath, va.D != tr.D || va.classNames != tr.classNames {
            throw DataError("\(vp): has \(va.D) dimensions and classes \(va.classNames); \(path) has \(tr.D) and \(tr.classNames)")
        }
        let D = tr.D, T = max(tr.T, va?.T ?? 0)
        let varying = tr.lengths != nil || va?.lengths != nil || (va != nil && va!.T != tr.T)
        var mean = [Double](repeating: 0, count: D), sq = [Double](repeating: 0, count: D)
        var m = 0.0
        for i in 0..<tr.n {
            for t in 0..<(tr.lengths.map { Int($0[i]) } ?? tr.T) {
                for d in 0..<D { let v = Double(tr.features[(i * tr.T + t) * D + d]); mean[d] += v; sq[d] += v * v }
                m += 1
            }
        }
        let std = (0..<D).map { d -> Double in let v = sq[d] / m - (mean[d] / m) * (mean[d] / m); return v > 0 ? v.squareRoot() : 1 }
        mean = mean.map { $0 / m }
        /// (n, T, D) normalized, padded with zeros from (n, Tf, D) and the lengths.
        func split(_ f: (features: [Float], n: Int, T: Int, D: Int, labels: [Int32], classNames: [String], lengths: [Int32]?)) -> Split {
            var out = [Float](repeating: 0, count: f.n * T * D)
            for i in 0..<f.n {
                for t in 0..<(f.lengths.map { Int($0[i]) } ?? f.T) {
                    for d in 0..<D { out[(i * T + t) * D + d] = Float((Double(f.features[(i * f.T + t) * D + d]) - mean[d]) / std[d]) }
                }
            }
            let lengths = varying ? (f.lengths ?? [Int32](repeating: Int32(f.T), count: f.n)) : nil
            return Split(inputs: .features(out, width: D), targets: .classes(f.labels, classes: f.classNames.count), count: f.n, lengths: lengths)
        }
        let train = split(tr)
        let validation = va.map { split($0) }
        let shape = varying ? "lengths \((train.lengths! + (validation?.lengths ?? [])).min()!)..\(T)" : "T=\(T)"
        return ArrayDataset(train: train, validation: validation, steps: T, output: .lastStep, shuffle: shuffle, seed: seed,
                            maxValidation: maxValidation,
                            summary: "ts \(path): \(tr.n) training and \(validation?.count ?? 0) validation sequences of \(shape), \(D) channels, classes \(tr.classNames.joined(separator: ", "))",
                            classNames: tr.classNames, bucketing: bucketing)
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
