import Foundation
import RNN
import RNNDistributed

/// Pipeline model parallelism (docs/PARALLELISM.md): N = D x S ranks, D data-parallel replicas of
/// an S-stage pipeline. World rank r is stage r % S of replica r / S, so the S stages of a
/// replica are neighbouring ranks: mpirun places consecutive ranks on one node, where the
/// activations and their gradients, sent every chunk, travel through shared memory; the gradient
/// allreduce among a stage's D replicas, once per step, is the traffic that crosses nodes.
struct PipelineLayout {
    let stages: Int, replicas: Int
    let stage: Int, replica: Int
    /// The layers of every stage, from the bottom.
    let layers: [Range<Int>]

    init(rank: Int, size: Int, stages: Int, layers: [Range<Int>]) {
        precondition(size % stages == 0 && layers.count == stages)
        self.stages = stages
        replicas = size / stages
        stage = rank % stages
        replica = rank / stages
        self.layers = layers
    }

    /// The split a config asks for: parallel.stage_layers as given, else balanced by FLOPs (all
    /// layers in one stage without a pipeline).
    static func split(_ parallel: TrainConfig.Parallel, spec: ModelSpec, steps: Int) -> [Range<Int>] {
        guard parallel.pipelineStages > 1 else { return [0..<spec.layers] }
        return parallel.stageLayers.map(ranges) ?? balanced(spec, stages: parallel.pipelineStages, steps: steps)
    }

    /// Each stage's range of the parameter layout (`Network.parameterRange`).
    func tensorRanges(_ spec: ModelSpec, layout: ParameterLayout) -> [Range<Int>] {
        layers.map { Network<Float>.parameterRange(layout, spec: spec, layers: $0) }
    }

    /// This rank's place in a pipeline of `layers.count` stages over `comm`, its two
    /// communicators split from it (collective: every rank calls it) and its messages.
    static func join(_ comm: Communicator, layers: [Range<Int>], console: Console) throws
        -> (layout: PipelineLayout, stageComm: Communicator, pipeComm: Communicator, messages: PipeMessages) {
        let p = PipelineLayout(rank: comm.rank, size: comm.size, stages: layers.count, layers: layers)
        let stageComm = try comm.split(color: p.stage, key: p.replica)
        let pipeComm = try comm.split(color: p.replica, key: p.stage)
        return (p, stageComm, pipeComm, PipeMessages(comm: pipeComm, console: console))
    }

    /// Layer counts per stage as contiguous ranges.
    static func ranges(counts: [Int]) -> [Range<Int>] {
        var lo = 0
        return counts.map { n in defer { lo += n }; return lo..<(lo + n) }
    }

    /// Multiply-adds per sample and step of layer k: its input projection and recurrent product,
    /// G*H*(I_k + H) (token input without an embedding is a column gather: no product); the
    /// head's O*H (per step, or once per sequence for last_step) counts to the top layer.
    static func cost(_ spec: ModelSpec, layer k: Int, steps: Int) -> Double {
        let G = Double(spec.cell.gates), H = Double(spec.hiddenSize)
        var input = Double(k == 0 ? spec.firstLayerInputWidth : spec.layerOutputWidth)
        if k == 0, spec.embeddingSize == nil, case .tokens = spec.input { input = 0 }
        var c = G * H * (input + H)
        if k == spec.layers - 1 {
            c += Double(spec.outputSize * spec.layerOutputWidth) / (spec.output == .everyStep ? 1 : Double(max(steps, 1)))
        }
        return c
    }

    /// The contiguous split of the layers into `stages` blocks whose largest cost is least (a
    /// dynamic program over the split points); ties go to the split with fewer layers below.
    static func balanced(_ spec: ModelSpec, stages S: Int, steps: Int) -> [Range<Int>] {
        let L = spec.layers
        let costs = (0..<L).map { cost(spec, layer: $0, steps: steps) }
        var prefix = [0.0]
        for c in costs { prefix.append(prefix.last! + c) }
        // best[s][j]: the least largest cost of layers 0..<j in s stages; cut[s][j] its last cut.
        var best = [[Double]](repeating: [Double](repeating: .infinity, count: L + 1), count: S + 1)
        var cut = [[Int]](repeating: [Int](repeating: 0, count: L + 1), count: S + 1)
        best[0][0] = 0
        for s in 1...S {
            for j in s...L {
                for i in (s - 1)..<j {
                    let v = max(best[s - 1][i], prefix[j] - prefix[i])
                    if v < best[s][j] { best[s][j] = v; cut[s][j] = i }
                }
            }
        }
        var bounds = [L]
        var j = L
        for s in stride(from: S, to: 0, by: -1) { j = cut[s][j]; bounds.append(j) }
        bounds.reverse()
        return (0..<S).map { bounds[$0]..<bounds[$0 + 1] }
    }

    /// The idle fraction the model expects of a sweep in C chunks, averaged over the stages: a
    /// stage with cost w_s of the largest stage's w_max is busy (w_s / w_max) C / (C + S - 1) of
    /// the time. Balanced stages give the pipeline bubble (S - 1) / (C + S - 1).
    static func modelledIdle(_ spec: ModelSpec, layers: [Range<Int>], steps: Int, chunks C: Int) -> Double {
        let w = layers.map { r in r.reduce(0.0) { $0 + cost(spec, layer: $1, steps: steps) } }
        let top = w.max()!, S = Double(layers.count), c = Double(C)
        return w.reduce(0.0) { $0 + 1 - ($1 / top) * c / (c + S - 1) } / S
    }

    /// The banner's lines: the layout and why.
    func describe(_ spec: ModelSpec, steps: Int, chunkSteps: Int) -> [String] {
        let total = (0..<spec.layers).reduce(0.0) { $0 + Self.cost(spec, layer: $1, steps: steps) }
        let chunks = Network<Float>.chunks(steps: steps, chunkSteps: chunkSteps)
        var lines = ["pipeline: \(stages) stages x \(replicas) replica\(replicas == 1 ? "" : "s"); rank r is stage r % \(stages) of replica r / \(stages), so a replica's stages are neighbouring ranks (one node) and carry the activation traffic, while the gradient allreduce runs among the \(replicas) rank\(replicas == 1 ? "" : "s") of each stage"]
        for (s, r) in layers.enumerated() {
            let share = r.reduce(0.0) { $0 + Self.cost(spec, layer: $1, steps: steps) } / total
            let extras = [s == 0 ? "input" : nil, s == stages - 1 ? "head and loss" : nil].compactMap { $0 }
            lines.append("  stage \(s): layers \(r.lowerBound)..<\(r.upperBound)\(extras.isEmpty ? "" : " + " + extras.joined(separator: ", ")), \(String(format: "%.0f", 100 * share))% of the FLOPs; ranks \((0..<replicas).map { String($0 * stages + s) }.joined(separator: ", "))")
        }
        let bubble = Double(stages - 1) / Double(chunks + stages - 1)
        let idle = Self.modelledIdle(spec, layers: layers, steps: steps, chunks: chunks)
        lines.append("  \(chunks) chunk\(chunks == 1 ? "" : "s") of \(chunkSteps == 0 ? steps : min(chunkSteps, steps)) steps per sweep: pipeline bubble (S-1)/(C+S-1) = \(String(format: "%.0f", 100 * bubble))%; modelled idle time of the stages with this split \(String(format: "%.0f", 100 * idle))%")
        return lines
    }
}

/// The point-to-point messages of one rank's pipeline stage, as the network's `Pipe`: chunk c's
/// activations go up (tag 1), its gradients down (tag 2). MPI keeps the order of messages between
/// two ranks with one tag, so chunks need no numbers. Sends are nonblocking and waited for at
/// the end of each pass (at most `maxOutstanding` at once: the shim's request table is finite);
/// receives block (watched: a stage that never sends ends the job). Nothing here allocates
/// after the first step.
final class PipeMessages {
    let comm: Communicator  // the S stages of this replica, ranked by stage
    let stage: Int, stages: Int
    let console: Console
    private var sends: [Int] = []
    static let maxOutstanding = 64
    /// Sent since the last `resetCounts`: bytes and messages; seconds blocked in receives.
    private(set) var bytesSent = 0, messagesSent = 0
    private(set) var receiveSeconds = 0.0

    init(comm: Communicator, console: Console) {
        self.comm = comm
        stage = comm.rank
        stages = comm.size
        self.console = console
    }

    func resetCounts() { bytesSent = 0; messagesSent = 0; receiveSeconds = 0 }

    private func fail(_ what: String, _ error: Error) -> Never {
        console.error("pipeline stage \(stage): \(what): \(error)")
        comm.abort(code: RNNDPError.runtimeFailure)
    }

    private func receive(_ into: UnsafeMutableBufferPointer<Float>, from peer: Int, tag: Int, what: String) {
        let t0 = monotonicSeconds()
        do {
            let id = try comm.startReceive(into, from: peer, tag: tag)
            (comm as? WatchedCommunicator)?.waitLabel = what
            try comm.wait(id)
        } catch { fail("receiving \(what)", error) }
        receiveSeconds += monotonicSeconds() - t0
    }

    private func send(_ from: UnsafeBufferPointer<Float>, to peer: Int, tag: Int) {
        do {
            if sends.count >= Self.maxOutstanding {
                (comm as? WatchedCommunicator)?.waitLabel = "an earlier chunk's send to a neighbouring stage"
                try comm.wait(sends.removeFirst())
            }
            sends.append(try comm.startSend(from, to: peer, tag: tag))
        } catch { fail("sending to stage \(peer)", error) }
        bytesSent += 4 * from.count
        messagesSent += 1
    }

    var ends: Network<Float>.Pipe {
        .init(receiveActivations: { [unowned self] c, into in
                  receive(into, from: stage - 1, tag: 1, what: "a chunk's activations from the stage below")
              },
              sendActivations: { [unowned self] _, from in send(from, to: stage + 1, tag: 1) },
              receiveGradient: { [unowned self] c, into in
                  receive(into, from: stage + 1, tag: 2, what: "a chunk's gradient from the stage above")
              },
              sendGradient: { [unowned self] _, from in send(from, to: stage - 1, tag: 2) },
              progress: { [unowned self] in
                  do { sends.removeAll { id in (try? comm.test(id)) ?? false } }
              },
              flush: { [unowned self] in
                  do {
                      (comm as? WatchedCommunicator)?.waitLabel = "the stage's sends to its neighbours"
                      for id in sends { try comm.wait(id) }
                  } catch { fail("completing sends", error) }
                  sends.removeAll(keepingCapacity: true)
              })
    }
}

/// A pipeline's gradient step: the step of the configured mode (data parallel, reproducible)
/// runs among the D replicas of this rank's stage (`inner`, on the stage communicator), and its
/// results are made whole over the S stages of the replica: the loss sums (the last stage has
/// them), the non-finite decision, the diagnostics, clipping's norm. Each rank holds its stage's
/// tensors only; what reads the whole model (evaluation, files) gathers it
/// (`Trainer.assembleWholeModel`).
final class PipelineStep: GradientStep {
    let inner: GradientStep
    let pipe: Communicator  // the S stages of this replica
    let network: Network<Float>
    let messages: PipeMessages
    let layout: PipelineLayout
    private var sums = [Double](repeating: 0, count: 4)

    init(inner: GradientStep, pipe: Communicator, network: Network<Float>, messages: PipeMessages, layout: PipelineLayout) {
        self.inner = inner
        self.pipe = pipe
        self.network = network
        self.messages = messages
        self.layout = layout
    }

    var summary: String { inner.summary + "; among the \(layout.replicas) replica\(layout.replicas == 1 ? "" : "s") of each of \(layout.stages) pipeline stages" }

    func gradients(step: Int, diagnostics: Bool) throws -> StepGradients {
        messages.resetCounts()
        var g = try inner.gradients(step: step, diagnostics: diagnostics)
        let t0 = monotonicSeconds()
        (sums[0], sums[1], sums[2], sums[3]) = (g.lossSum, g.lossTerms, g.correct, g.finite ? 0 : 1)
        try pipe.allreduceSum(&sums)
        (g.lossSum, g.lossTerms, g.correct) = (sums[0], sums[1], sums[2])
        g.finite = sums[3] == 0
        if var d = g.diagnostics {
            try pipe.allreduceSum(&d)
            g.diagnostics = d
        }
        let seconds = monotonicSeconds() - t0
        g.reduction.communication += seconds
        g.reduction.exposed += seconds
        return g
    }

    func updated(step: Int) throws -> Double { try inner.updated(step: step) }
    var replicasApart: Bool { inner.replicasApart }

    func sumAcrossStages(_ parts: inout [Double]) throws { try pipe.allreduceSum(&parts) }

    @discardableResult
    func synchronizeParameters() throws -> Double { try inner.synchronizeParameters() }
}
