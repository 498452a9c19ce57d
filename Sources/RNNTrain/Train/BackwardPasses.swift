import RNN
import RNNData

/// The forward and backward passes of one step over some of its rows: `accumulate` micro-batches,
/// each in chunks of `chunkLength` time steps (truncated BPTT) with the hidden state carried from
/// chunk to chunk and no gradient across the boundary. Every rank makes the same number of
/// passes, which batch norm's reductions require. The gradient sum is added to the network's
/// gradient buffer; the batch and the carried state live in workspaces reused from step to step,
/// so a step allocates nothing.
final class BackwardPasses {
    let network: Network<Float>
    let source: BatchSource
    let accumulate: Int
    /// Time steps per sequence, and per backward pass (training.bptt_length, or T).
    let steps: Int, chunkLength: Int
    /// True during the pass after which the step's gradients are final: the reducer's hooks act
    /// only in it.
    private(set) var finalPass = false
    private var batch = Batch(batchSize: 0, steps: 0)
    private var state: [Float] = []  // (L, C, rows, H): the initial state of the next pass

    /// The run's seed, which dropout's masks start from (Network.DropoutKey).
    let seed: UInt64

    init(network: Network<Float>, source: BatchSource, accumulate: Int, steps: Int, bpttLength: Int, seed: UInt64) {
        self.network = network
        self.seed = seed
        self.source = source
        self.accumulate = accumulate
        self.steps = steps
        chunkLength = bpttLength > 0 ? min(bpttLength, steps) : steps
    }

    /// Steps of a sequence's last chunk (the pass the diagnostics come from): shorter than
    /// `chunkLength` when it does not divide T.
    var lastChunkLength: Int { steps - (steps - 1) / chunkLength * chunkLength }

    /// This rank's gradient sum for `step` over global rows `rows`, in `accumulate` micro-batches.
    /// With diagnostics, also their (additive) sums per micro-batch; with truncated BPTT the
    /// per-step norms are those of each micro-batch's last chunk. `final`: the passes end the
    /// step's backward computation (false for all but the last micro-shard in reproducible mode).
    func gradient(step: Int, rows: Range<Int>, diagnostics: Bool, final: Bool = true) -> (LossStats, [Double]?) {
        var stats = LossStats()
        var sums: [Double]?
        let a = accumulate
        for m in 0..<a {
            let lo = rows.lowerBound + m * rows.count / a, hi = rows.lowerBound + (m + 1) * rows.count / a
            let (s, d) = gradientOfRows(step: step, rows: lo..<hi, diagnostics: diagnostics, lastOfStep: final && m == a - 1)
            stats += s
            if let d { sums = sums.map { zip($0, d).map { $0 + $1 } } ?? d }
        }
        return (stats, sums)
    }

    /// One micro-batch: global rows `rows`, in chunks of `chunkLength` steps.
    func gradientOfRows(step: Int, rows: Range<Int>, diagnostics: Bool, lastOfStep: Bool) -> (LossStats, [Double]?) {
        let net = network, T = steps, k = chunkLength
        var stats = LossStats()
        var sums: [Double]?
        let stateCount = net.stateCount * rows.count
        if state.count != stateCount { state = [Float](repeating: 0, count: stateCount) }
        var carried = source.fill(&batch, step: step, rows: rows, state: &state)
        let whole = batch
        var t0 = 0
        while t0 < T {
            let t1 = min(t0 + k, T)
            let last = t1 == T
            net.collectDiagnostics = diagnostics && last
            finalPass = last && lastOfStep
            net.dropoutKey = .init(seed: seed, step: step, rowOffset: rows.lowerBound, timeOffset: t0)
            let chunk = k == T ? whole : whole.timeSlice(t0..<t1, everyStep: true, inputWidth: net.spec.input.width, outputWidth: net.spec.outputSize)
            if carried {
                stats += state.withUnsafeBufferPointer { net.lossAndGradient(chunk, initialState: $0.baseAddress) }
            } else {
                stats += net.lossAndGradient(chunk)  // the model's own initial state
            }
            finalPass = false
            if !last || source.carriesState {
                state.withUnsafeMutableBufferPointer { net.finalState(into: $0.baseAddress!) }
                carried = true
            }
            if diagnostics && last { sums = net.diagnosticSums(steps: lastChunkLength) }
            t0 = t1
        }
        if source.carriesState { source.keep(finalState: state, rows: rows) }
        return (stats, sums)
    }
}
