import Foundation

/// Signals of vanishing, exploding and saturated units, per recurrent layer.
///
/// The raw material is a vector of sums (`Network.diagnosticSums`) that is additive over samples,
/// so summing it across ranks (one allreduce) gives exactly the numbers one process would compute
/// on the whole global batch; `Diagnostics(sums:)` then turns it into fractions and norms.
///
/// Definitions:
/// - dh norms: ||dL/dh_t|| over the batch for t = 0..T-1, the total gradient reaching the layer's
///   output at step t (from the loss and from later steps). `dhRatio` = ||dL/dh_0|| / ||dL/dh_{T-1}||:
///   far below 1 signals vanishing gradients, far above 1 exploding ones.
/// - saturated: sigmoid outputs with |z| > 2.2 (output outside [0.0998, 0.9002]) and tanh outputs
///   with |z| > 1.1 (|output| > 0.8005), the tanh region where its derivative, like sigmoid's at 2.2,
///   has fallen to 36% of its peak. For LSTM/GRU every gate counts, by its own nonlinearity.
/// - nearDead: sigmoid/tanh outputs (Elman h, or the gates) within 0.01 of zero: units passing
///   (almost) nothing on.
/// - deadUnits: relu / leaky_relu Elman units that never fired (h > 0) at any step of any sample.
public struct Diagnostics: Equatable, Sendable {
    public var dhNorms: [[Double]]  // (L, T)
    public var saturated: [Double?]  // (L): fraction, nil for relu
    public var nearDead: [Double?]  // (L)
    public var deadUnits: [Double?]  // (L): fraction of H, nil for sigmoid/tanh units
    /// T-1 is the last step any sample reached: with unequal lengths the steps after the batch's
    /// longest sequence have no gradient (norm 0) and are skipped.
    public var dhRatio: [Double] { dhNorms.map { ($0.first ?? .nan) / ($0.last { $0 > 0 } ?? .nan) } }
}

extension Network {
    /// The length of `diagnosticSums()` for a backward pass over `steps` time steps: (L, 3 + H + T).
    public func diagnosticSumCount(steps T: Int) -> Int { spec.units * (3 + spec.hiddenSize + T) }

    /// The additive sums behind `Diagnostics`, from the latest `lossAndGradient` (which must have
    /// run with `collectDiagnostics` set). Shape (L, 3 + H + T): per layer the saturated count, the
    /// number of outputs counted, the near-dead count, H fired counts (relu), T squared dh norms.
    /// T: `steps`, at least the forward's (zeros after it: a batch of shorter sequences), so that
    /// batches of any lengths add up; default the forward's.
    public func diagnosticSums(steps: Int? = nil) -> [Double] {
        let L = spec.units, H = spec.hiddenSize, T = steps ?? lastSteps, rows = lastRows
        precondition(T >= lastSteps, "diagnostics over fewer steps than the forward's")
        let width = 3 + H + T
        var out = [Double](repeating: 0, count: L * width)
        let sigmoidLow = 0.0998, sigmoidHigh = 0.9002, tanhHigh = 0.8005, dead = 0.01
        // A pipeline stage sums its own layers (zeros elsewhere, so the stages' sums add up).
        for k in 0..<L where stageLayers.contains(k / spec.directions) {
            var saturated = 0.0, counted = 0.0, nearDead = 0.0
            func sig(_ a: Double) { counted += 1; if a < sigmoidLow || a > sigmoidHigh { saturated += 1 }; if a < dead { nearDead += 1 } }
            func tanhOut(_ a: Double) { counted += 1; if abs(a) > tanhHigh { saturated += 1 }; if abs(a) < dead { nearDead += 1 } }
            let base = k * width
            switch spec.cell {
            case .rnn:
                let h = hiddenStates(layer: k)
                switch spec.activation {
                case .tanh: for v in h { tanhOut(Double(v)) }
                case .sigmoid: for v in h { sig(Double(v)) }
                case .relu, .leakyRelu:
                    for i in 0..<rows { for j in 0..<H where h[i * H + j] > 0 { out[base + 3 + j] += 1 } }
                }
            case .lstm, .gru:
                let a = gateActivations(layer: k)
                let G = spec.cell.gates
                // Gates whose nonlinearity is tanh: LSTM g (index 2), GRU n (index 2).
                for i in 0..<rows {
                    for gate in 0..<G {
                        let row = a.baseAddress! + (i * G + gate) * H
                        if gate == 2 { for j in 0..<H { tanhOut(Double(row[j])) } } else { for j in 0..<H { sig(Double(row[j])) } }
                    }
                }
            }
            out[base] = saturated
            out[base + 1] = counted
            out[base + 2] = nearDead
            for t in 0..<lastSteps { out[base + 3 + H + t] = dhNormSquares[k * lastSteps + t] }
        }
        return out
    }
}

extension Diagnostics {
    /// Fractions and norms from the (rank-summed) sums of `Network.diagnosticSums`.
    public init(sums: [Double], spec: ModelSpec, steps T: Int) {
        let H = spec.hiddenSize, width = 3 + H + T
        let relu = spec.cell == .rnn && (spec.activation == .relu || spec.activation == .leakyRelu)
        dhNorms = (0..<spec.units).map { k in (0..<T).map { sums[k * width + 3 + H + $0].squareRoot() } }
        saturated = (0..<spec.units).map { k in relu ? nil : sums[k * width] / max(sums[k * width + 1], 1) }
        nearDead = (0..<spec.units).map { k in relu ? nil : sums[k * width + 2] / max(sums[k * width + 1], 1) }
        deadUnits = (0..<spec.units).map { k in
            relu ? Double((0..<H).filter { sums[k * width + 3 + $0] == 0 }.count) / Double(H) : nil
        }
    }
}

/// The L2 norm of each named tensor of a gradient buffer.
public func tensorNorms<S: RNNScalar>(_ buffer: Buffer<S>, layout: ParameterLayout) -> [(name: String, norm: Double)] {
    layout.views.map { v in (v.name, S.sumOfSquares(buffer.pointer + v.offset, v.count).squareRoot()) }
}
