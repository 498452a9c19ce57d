import RNN
import RNNData
import RNNDistributed

/// What a step's gradient computation leaves behind, the same on every rank: the gradient of the
/// update in the network's gradient buffer (already the mean the optimizer uses), and this.
struct StepGradients {
    /// Loss summed over the global batch, its number of terms, the terms predicted right, and the
    /// time steps computed (the samples' lengths summed).
    var lossSum = 0.0, lossTerms = 0.0, correct = 0.0, steps = 0.0
    /// Diagnostic sums over the global batch (log steps only).
    var diagnostics: [Double]?
    /// Whether every rank's gradient is finite (decided from reduced values, so alike everywhere).
    var finite = true
    /// Seconds of computing and of reducing.
    var compute = 0.0
    var reduction = ReductionTiming()

    var meanLoss: Double { lossSum / lossTerms }
}

/// One way to synchronize replicas (docs/ARCHITECTURE.md, "A training step"). The loop calls
/// `gradients`, updates, then `updated`; before anything every rank must read alike (evaluation,
/// the replica check, a checkpoint) it calls `synchronizeParameters`. Every implementation makes
/// the same collectives in the same order on every rank.
protocol GradientStep: AnyObject {
    /// One line for the start-up banner.
    var summary: String { get }
    func gradients(step: Int, diagnostics: Bool) throws -> StepGradients
    /// After the optimizer's update; returns seconds spent communicating.
    func updated(step: Int) throws -> Double
    /// Makes the replicas identical if they may differ; returns seconds spent communicating.
    @discardableResult func synchronizeParameters() throws -> Double
    /// Whether the replicas may differ now (the periodic replica check waits for them to meet).
    var replicasApart: Bool { get }
    /// Sums per-tensor values over the ranks that hold different tensors (a pipeline's stages),
    /// in place: clipping's norm and the logged gradient norms cover the whole model.
    func sumAcrossStages(_ parts: inout [Double]) throws
}

/// What the data-parallel and local SGD steps share: this rank's rows of the global batch, their
/// passes, and one allreduce of the loss sums (loss, terms, correct, steps, and whether any rank's
/// gradient is non-finite) and one of the diagnostics.
class ShardStep {
    let network: Network<Float>
    let comm: Communicator
    let passes: BackwardPasses
    let rows: Range<Int>, globalBatch: Int
    let fault: FaultInjection?
    private var sums = [Double](repeating: 0, count: 5)

    init(network: Network<Float>, comm: Communicator, passes: BackwardPasses, globalBatch: Int, fault: FaultInjection?) {
        self.network = network
        self.comm = comm
        self.passes = passes
        self.globalBatch = globalBatch
        self.fault = fault
        rows = comm.shard(of: globalBatch)
    }

    /// The global sums of `local` and the diagnostics into `g`; returns whether any rank's flag
    /// `bad` was set (the same answer on every rank).
    func reduceLoss(_ local: LossStats, bad: Bool, diagnostics: [Double]?, into g: inout StepGradients) throws -> Bool {
        sums[0] = local.sum; sums[1] = Double(local.count); sums[2] = Double(local.correct); sums[3] = Double(local.steps)
        sums[4] = bad ? 1 : 0
        try comm.allreduceSum(&sums)
        (g.lossSum, g.lossTerms, g.correct, g.steps) = (sums[0], sums[1], sums[2], sums[3])
        // Diagnostics on log steps, from values summed across ranks (N-independent).
        if var d = diagnostics {
            try comm.allreduceSum(&d)
            g.diagnostics = d
        }
        return sums[4] != 0
    }
}

/// How replicas synchronize: training.reproducible, training.local_sgd_steps, or (the default)
/// the gradient reducer of training.bucket_mb and training.compression.
enum SynchronizationMode {
    case dataParallel(bucketBytes: Int, compression: Compression)
    case localSGD(period: Int)
    case reproducible(microShards: Int)
}

/// The GradientStep of a mode (the trainer's and `rnn-dp bench`'s).
func makeGradientStep(_ mode: SynchronizationMode, network: Network<Float>, comm: Communicator, passes: BackwardPasses,
                      globalBatch: Int, fault: FaultInjection?) -> GradientStep {
    switch mode {
    case .reproducible(let M):
        return ReproducibleStep(network: network, comm: comm, passes: passes, globalBatch: globalBatch, microShards: M, fault: fault)
    case .localSGD(let k):
        return LocalSGDStep(network: network, comm: comm, passes: passes, globalBatch: globalBatch, period: k, fault: fault)
    case .dataParallel(let bucketBytes, let compression):
        // A pipeline stage exchanges its own tensors only.
        let reducer = makeGradientReducer(comm: comm, buffer: network.gradients.buffer, bucketBytes: bucketBytes, compression: compression)
        return DataParallelStep(network: network, comm: comm, passes: passes, reducer: reducer, globalBatch: globalBatch, fault: fault)
    }
}

/// The steps whose replicas never differ: nothing to do after the update or before a shared read.
extension GradientStep {
    func updated(step: Int) throws -> Double { 0 }
    func synchronizeParameters() throws -> Double { 0 }
    var replicasApart: Bool { false }
    func sumAcrossStages(_ parts: inout [Double]) throws {}
}

extension BackwardPasses {
    /// After the reduction, on every rank alike: the batch source's exchange (stateful streams),
    /// the gradient divided by `globalSamples` (or, averaging over time, by the samples' time
    /// steps summed, `globalSteps`); returns whether it is finite.
    func finishStep(globalSamples: Int, globalSteps: Double) throws -> Bool {
        try source.exchange()
        network.normalizeGradients(globalSamples: globalSamples, globalSteps: Int(globalSteps))
        return Float.allFinite(network.gradients.pointer, network.gradients.count)
    }
}

/// Data parallelism: each rank computes its shard's gradient sum, the reducer sums it over ranks
/// (overlapping the backward pass when it can), and every rank divides by the global batch.
final class DataParallelStep: ShardStep, GradientStep {
    let reducer: GradientReducer
    private var armed = false
    private var hookError: Error?

    init(network: Network<Float>, comm: Communicator, passes: BackwardPasses, reducer: GradientReducer, globalBatch: Int, fault: FaultInjection?) {
        self.reducer = reducer
        super.init(network: network, comm: comm, passes: passes, globalBatch: globalBatch, fault: fault)
        guard reducer.overlapsBackward else { return }
        // Installed once; they act in the pass after which the step's gradients are final.
        let base = network.stageBase  // a pipeline stage's gradient buffer starts at its first tensor
        network.onGradientsFinal = { [unowned self] offset in
            guard self.armed && self.passes.finalPass else { return }
            do { try self.reducer.ready(from: max(offset - base, 0)) } catch { self.hookError = self.hookError ?? error }
        }
        network.onProgress = { [unowned self] in
            guard self.armed && self.passes.finalPass else { return }
            do { try self.reducer.progress() } catch { self.hookError = self.hookError ?? error }
        }
    }

    var summary: String { "exchange: \(reducer.summary)" }

    func gradients(step: Int, diagnostics: Bool) throws -> StepGradients {
        let t0 = monotonicSeconds()
        armed = !(fault?.suspendsOverlap(step: step) ?? false)
        reducer.begin()
        let (local, diagnosticSums) = passes.gradient(step: step, rows: rows, diagnostics: diagnostics)
        armed = false
        fault?.beforeReduction(step: step, rank: comm.rank, gradients: network.gradients)
        if let error = hookError { throw error }
        var g = StepGradients()
        g.compute = monotonicSeconds() - t0
        g.reduction = try reducer.finish()
        _ = try reduceLoss(local, bad: false, diagnostics: diagnosticSums, into: &g)
        g.finite = try passes.finishStep(globalSamples: globalBatch, globalSteps: g.steps)
        return g
    }
}

/// Local SGD (PyTorch's PostLocalSGDOptimizer): no gradient exchange; each rank steps with its
/// own shard's mean gradient and the parameters are averaged every `period` steps (and before
/// every shared read). The optimizer state stays each rank's own.
final class LocalSGDStep: ShardStep, GradientStep {
    let period: Int
    private(set) var replicasApart = false

    init(network: Network<Float>, comm: Communicator, passes: BackwardPasses, globalBatch: Int, period: Int, fault: FaultInjection?) {
        self.period = period
        super.init(network: network, comm: comm, passes: passes, globalBatch: globalBatch, fault: fault)
    }

    var summary: String {
        "exchange: local SGD, parameters averaged over ranks every \(period) step\(period == 1 ? "" : "s") (and before every evaluation, replica check and checkpoint)"
    }

    func gradients(step: Int, diagnostics: Bool) throws -> StepGradients {
        let t0 = monotonicSeconds()
        let (local, diagnosticSums) = passes.gradient(step: step, rows: rows, diagnostics: diagnostics)
        fault?.beforeReduction(step: step, rank: comm.rank, gradients: network.gradients)
        var g = StepGradients()
        g.compute = monotonicSeconds() - t0
        // Whether any rank's gradient is non-finite travels with the loss sums, so that every
        // rank decides the same.
        let bad = !Float.allFinite(network.gradients.pointer, network.gradients.count)
        g.finite = try !reduceLoss(local, bad: bad, diagnostics: diagnosticSums, into: &g)
        _ = try passes.finishStep(globalSamples: rows.count, globalSteps: Double(local.steps))  // finiteness: every rank's flag, above
        return g
    }

    func updated(step: Int) throws -> Double {
        replicasApart = true
        return step % period == 0 ? try synchronizeParameters() : 0
    }

    /// The mean of every rank's parameters, when they moved apart since the last averaging (a
    /// decision every rank makes alike: it depends on the step count only).
    func synchronizeParameters() throws -> Double {
        guard replicasApart else { return 0 }
        let t0 = monotonicSeconds()
        try comm.allreduceMean(network.parameters.buffer)
        replicasApart = false
        return monotonicSeconds() - t0
    }
}

/// training.reproducible: the global batch in M fixed micro-shards (micro-shard j holds global
/// rows [j*B/M, (j+1)*B/M)); this rank computes micro-shards [r*M/N, (r+1)*M/N), each on its own
/// with fixed shapes, and everything that feeds the update is summed exactly over all
/// micro-shards in 64-bit fixed point (FixedPointReduction): the gradient, the loss sums, the
/// diagnostics, and batch norm's per-micro-shard statistics, which move the running statistics
/// once. The result's bits do not depend on N.
final class ReproducibleStep: GradientStep {
    let network: Network<Float>
    let comm: Communicator
    let passes: BackwardPasses
    let microShards: Int, globalBatch: Int
    let reduction: FixedPointReduction
    let mine: Range<Int>
    let fault: FaultInjection?

    init(network: Network<Float>, comm: Communicator, passes: BackwardPasses, globalBatch: Int, microShards: Int, fault: FaultInjection?) {
        self.network = network
        self.comm = comm
        self.passes = passes
        self.globalBatch = globalBatch
        self.microShards = microShards
        self.fault = fault
        // A pipeline stage sums its own tensors only, one fixed-point scale per tensor as ever.
        let base = network.stageBase
        reduction = FixedPointReduction(comm: comm, count: network.gradients.count,
                                        segments: network.stageViews.map { ($0.offset - base)..<($0.offset - base + $0.count) })
        mine = Shard.rows(globalBatch: microShards, rank: comm.rank, size: comm.size)
        // Batch norm per micro-shard (ghost batch norm), not across ranks.
        network.reduceAcrossRanks = nil
    }

    var summary: String {
        "exchange: reproducible, \(microShards) fixed micro-shards of about \(globalBatch / microShards) samples summed exactly in 64-bit fixed point; rank 0 computes micro-shards \(mine.lowerBound)..<\(mine.upperBound)"
    }

    func gradients(step: Int, diagnostics: Bool) throws -> StepGradients {
        let net = network, M = microShards, B = globalBatch
        let t0 = monotonicSeconds()
        var lossParts: [[Double]] = [], diagnosticParts: [[Double]] = [], statisticParts: [[Double]] = []
        try reduction.reduceMicroShards(mine.count, gradients: net.gradients.pointer, totalParts: M) { n in
            net.gradients.zero()
            if net.spec.batchNorm { net.deferredStatistics = net.emptyDeferredStatistics() }
            let (stats, sums) = passes.gradient(step: step, rows: Shard.rows(globalBatch: B, rank: mine.lowerBound + n, size: M),
                                                diagnostics: diagnostics, final: false)
            // The injected NaN enters the first micro-shard; a hang stops before the reduction.
            if n == 0 && fault?.kind == .nan { fault?.beforeReduction(step: step, rank: comm.rank, gradients: net.gradients) }
            if n == mine.count - 1 && fault?.kind == .hang { fault?.beforeReduction(step: step, rank: comm.rank, gradients: net.gradients) }
            lossParts.append([stats.sum, Double(stats.count), Double(stats.correct), Double(stats.steps)])
            if let sums { diagnosticParts.append(sums) }
            if let d = net.deferredStatistics { statisticParts.append(d) }
        }
        net.deferredStatistics = nil
        var g = StepGradients()
        let loss = try FixedPoint.sum(lossParts, count: 4, totalParts: M, comm: comm)
        (g.lossSum, g.lossTerms, g.correct, g.steps) = (loss[0], loss[1], loss[2], loss[3])
        if diagnostics {
            g.diagnostics = try FixedPoint.sum(diagnosticParts, count: net.diagnosticSumCount(steps: passes.lastChunkLength), totalParts: M, comm: comm)
        }
        if net.spec.batchNorm {
            net.updateRunningStatistics(try FixedPoint.sum(statisticParts, count: net.runningStatistics.count + 1, totalParts: M, comm: comm))
        }
        g.compute = monotonicSeconds() - t0
        g.finite = try passes.finishStep(globalSamples: B, globalSteps: g.steps)
        return g
    }
}
