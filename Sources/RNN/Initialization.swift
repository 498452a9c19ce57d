import Foundation

/// How each kind of parameter is initialized.
public struct InitSettings: Equatable, Sendable {
    public enum Method: String, CaseIterable, Sendable {
        /// PyTorch's default: U(-1/sqrt(H), 1/sqrt(H)) for every nn.RNN/LSTM/GRU tensor, and
        /// nn.Linear's kaiming_uniform(a = sqrt 5), which is U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        case `default`
        /// Glorot & Bengio 2010: U(-a, a), a = sqrt(6 / (fan_in + fan_out)).
        case xavierUniform = "xavier_uniform"
        /// N(0, 2 / (fan_in + fan_out)).
        case xavierNormal = "xavier_normal"
        /// He et al. 2015 (torch.nn.init.kaiming_uniform_ with a = 0): U(-a, a), a = sqrt(6 / fan_in).
        case kaimingUniform = "kaiming_uniform"
        /// N(0, 2 / fan_in).
        case kaimingNormal = "kaiming_normal"
        /// Saxe et al. 2014: a (semi-)orthogonal matrix from the QR decomposition of a Gaussian one.
        case orthogonal
        /// Le, Jaitly & Hinton 2015 (IRNN): W_hh = identity. Elman cell only.
        case identity
    }
    public var inputWeights: Method = .default
    public var recurrentWeights: Method = .default
    public var headWeights: Method = .default
    public var zeroBiases = false
    /// LSTM: the forget-gate slice of bias_ih is set to this and that of bias_hh to 0.
    public var forgetBias: Double? = nil

    public init(inputWeights: Method = .default, recurrentWeights: Method = .default, headWeights: Method = .default,
                zeroBiases: Bool = false, forgetBias: Double? = nil) {
        self.inputWeights = inputWeights
        self.recurrentWeights = recurrentWeights
        self.headWeights = headWeights
        self.zeroBiases = zeroBiases
        self.forgetBias = forgetBias
    }
}

extension Network {
    /// Initializes every parameter from the `parameters` stream of the seed, in layout order.
    /// Gate matrices (G*H, I) are initialized gate block by gate block, each an (H, I) matrix with
    /// fan_in = I and fan_out = H (the convention of Keras and of most LSTM papers; PyTorch's
    /// init functions applied to the whole tensor would use fan_out = G*H). Learned initial states
    /// start at zero.
    public func initializeParameters(seed: UInt64, settings: InitSettings = InitSettings()) {
        var rng = Xoshiro256(seed: seed, stream: RandomStream.parameters.rawValue)
        // Every element of the whole model is drawn in the same order; a pipeline stage keeps
        // those of its own tensors, so its values are the whole model's.
        let own = stageParameters, base = stageBase
        func set(_ i: Int, _ x: S) { if own.contains(i) { parameters[i - base] = x } }
        let H = spec.hiddenSize
        let bound = 1 / Double(H).squareRoot()
        let G = spec.cell.gates
        func fill(_ v: ParamView, _ method: InitSettings.Method) {
            let rows = v.shape[0] / (v.shape.count == 2 && v.name.hasPrefix("rnn.") ? G : 1)
            let cols = v.shape.count == 2 ? v.shape[1] : 1
            let blocks = v.count / (rows * cols)
            for blk in 0..<blocks {
                let values = Initializer.matrix(method, rows: rows, cols: cols, defaultBound: bound, rng: &rng)
                for i in 0..<values.count { set(v.offset + blk * rows * cols + i, S(values[i])) }
            }
        }
        for k in 0..<spec.units {
            let l = layout.layer(k)
            fill(l.wih, settings.inputWeights)
            fill(l.whh, settings.recurrentWeights)
            for b in [l.bih, l.bhh] {
                for i in b.range { set(i, settings.zeroBiases ? 0 : S((rng.nextDouble() * 2 - 1) * bound)) }
            }
            if let fb = settings.forgetBias, spec.cell == .lstm {
                for j in H..<(2 * H) {
                    set(l.bih.offset + j, S(fb))
                    set(l.bhh.offset + j, 0)
                }
            }
            for v in [l.h0, l.c0, l.lnBias, l.bnBias].compactMap({ $0 }) { for i in v.range { set(i, 0) } }
            for v in [l.lnWeight, l.bnWeight].compactMap({ $0 }) { for i in v.range { set(i, 1) } }
        }
        if !spec.tieWeights { fill(layout.headWeight, settings.headWeights) }
        // nn.Embedding's default: N(0, 1).
        if let e = layout.embedding { for i in e.range { set(i, S(Initializer.normal(&rng))) } }
        for i in layout.headBias.range { set(i, settings.zeroBiases ? 0 : S((rng.nextDouble() * 2 - 1) * bound)) }
    }
}

/// Random matrices for initialization, row-major (rows, cols), in Double.
public enum Initializer {
    public static func normal(_ rng: inout Xoshiro256) -> Double {
        // Box-Muller; 1 - u keeps the logarithm finite.
        let u = 1 - rng.nextDouble(), v = rng.nextDouble()
        return (-2 * log(u)).squareRoot() * cos(2 * Double.pi * v)
    }

    public static func matrix(_ method: InitSettings.Method, rows: Int, cols: Int, defaultBound: Double,
                              rng: inout Xoshiro256) -> [Double] {
        let n = rows * cols
        let fanIn = Double(cols), fanOut = Double(rows)
        switch method {
        case .default:
            return (0..<n).map { _ in (rng.nextDouble() * 2 - 1) * defaultBound }
        case .xavierUniform:
            let a = (6 / (fanIn + fanOut)).squareRoot()
            return (0..<n).map { _ in (rng.nextDouble() * 2 - 1) * a }
        case .xavierNormal:
            let sd = (2 / (fanIn + fanOut)).squareRoot()
            return (0..<n).map { _ in normal(&rng) * sd }
        case .kaimingUniform:
            let a = (6 / fanIn).squareRoot()
            return (0..<n).map { _ in (rng.nextDouble() * 2 - 1) * a }
        case .kaimingNormal:
            let sd = (2 / fanIn).squareRoot()
            return (0..<n).map { _ in normal(&rng) * sd }
        case .identity:
            return (0..<n).map { i in i / cols == i % cols ? 1 : 0 }
        case .orthogonal:
            return orthogonal(rows: rows, cols: cols, rng: &rng)
        }
    }

    /// A (rows, cols) matrix with orthonormal rows (rows <= cols) or columns (rows >= cols):
    /// modified Gram-Schmidt, applied twice, on the columns of a tall Gaussian matrix.
    static func orthogonal(rows: Int, cols: Int, rng: inout Xoshiro256) -> [Double] {
        let tall = max(rows, cols), narrow = min(rows, cols)
        var q = (0..<(tall * narrow)).map { _ in normal(&rng) }  // column-major (tall, narrow)
        for _ in 0..<2 {
            for j in 0..<narrow {
                for i in 0..<j {
                    var dot = 0.0
                    for r in 0..<tall { dot += q[i * tall + r] * q[j * tall + r] }
                    for r in 0..<tall { q[j * tall + r] -= dot * q[i * tall + r] }
                }
                var norm = 0.0
                for r in 0..<tall { norm += q[j * tall + r] * q[j * tall + r] }
                norm = norm.squareRoot()
                for r in 0..<tall { q[j * tall + r] /= norm }
            }
        }
        var out = [Double](repeating: 0, count: rows * cols)
        for r in 0..<rows {
            for c in 0..<cols {
                // Column j of q is column j of the result when rows >= cols, else row j.
                out[r * cols + c] = rows >= cols ? q[c * tall + r] : q[r * tall + c]
            }
        }
        return out
    }
}
