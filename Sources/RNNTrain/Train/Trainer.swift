import Foundation
import RNN
import RNNData
import RNNDistributed

/// What a finished run reports (also used by tests).
public struct TrainResult {
    public var steps: Int
    public var finalLoss: Double
    public var validationLoss: Double?
    public var parameterChecksum: UInt64
}

/// The training job of one rank (docs/ARCHITECTURE.md, "A training step"): `setUp` builds the
/// data, the model and the way replicas synchronize (a GradientStep), and `run` is the loop.
/// Every rank runs it; they differ only in which rows of each global batch they compute.
public final class Trainer {
    public let config: TrainConfig
    let comm: Communicator
    let console: Console
    /// A checkpoint to continue from (`train --resume`).
    public let resumePath: String?
    /// train --overwrite: move a previous run's files aside instead of refusing the directory.
    public let overwrite: Bool
    /// The communicator with the collective watchdog, when one runs.
    let watched: WatchedCommunicator?
    let fault = FaultInjection.fromEnvironment()

    // Built by setUp().
    public private(set) var dataset: Dataset!
    public private(set) var network: Network<Float>!
    var optimizer: (any Optimizer<Float>)!
    var schedule = LearningRateSchedule(base: 0, schedule: .constant)
    var batches: BatchSource!
    var passes: BackwardPasses!
    var gradientStep: GradientStep!
    var nonFinite: NonFiniteGuard!
    var report: StepReport!
    /// The lock on output.directory while the run lives (rank 0).
    var runDirectory: RunDirectory?
    /// Fraction of validation terms whose arg-max is the target, after `evaluate` (cross-entropy).
    public private(set) var validationAccuracy: Double?
    /// Called at the start of every step with its number (tests: allocation counting).
    var stepObserver: ((Int) -> Void)?
    /// Per tensor, the sum of squares of its gradient (the whole model's, over pipeline stages).
    private var tensorSquares: [Double] = []
    /// parallel.pipeline_stages > 1: where this rank sits, its stage's messages, and the
    /// communicator of the D replicas of its stage, which data, batch norm and the gradient
    /// exchange use (`dataComm`; the world without a pipeline).
    var pipeline: PipelineLayout?
    var messages: PipeMessages?
    var pipeComm: Communicator?
    var dataComm: Communicator!
    /// The whole model under a pipeline, assembled for a read (`assembleWholeModel`) and dropped
    /// when the next step begins; without one, the training network.
    private(set) var wholeModel: Network<Float>?

    public init(config: TrainConfig, comm: Communicator, console: Console, resume: String? = nil, overwrite: Bool = false) {
        self.config = config
        self.overwrite = overwrite
        self.console = console
        resumePath = resume
        if config.training.timeoutSeconds > 0 && comm.size > 1 {
            let w = WatchedCommunicator(comm, timeout: config.training.timeoutSeconds)
            self.comm = w
            watched = w
        } else {
            self.comm = comm
            watched = nil
        }
    }

    // MARK: the loop

    @discardableResult
    public func run() throws -> TrainResult {
        let startStep = try setUp()
        defer { runDirectory?.release(); runDirectory = nil }
        let net = network!, t = config.training, steps = t.steps
        var lastLoss = Double.nan
        var validation: Double?
        for step in (startStep + 1)..<(steps + 1) {
            stepObserver?(step)
            watched?.step = step
            (wholeModel, assembled) = (nil, false)  // the parameters are about to change
            let lr = schedule.learningRate(step: step - 1)
            let logNow = step % config.output.logEvery == 0 || step == steps
            net.gradients.zero()
            nonFinite.snapshot()
            let g = try gradientStep.gradients(step: step, diagnostics: logNow)
            report.time(g, step: step)
            lastLoss = g.meanLoss
            guard try nonFinite.admit(step: step, gradients: g, saveLastGood: { try saveCheckpoint(step: step - 1) }) else {
                try stopIfSignalled(step: step)
                continue
            }
            batches.accept()
            let diagnostics = g.diagnostics.map { Diagnostics(sums: $0, spec: net.spec, steps: passes.lastChunkLength) }
            let norm = try gradientNorm()
            let tensorGradNorms = diagnostics == nil ? [] : zip(net.layout.views, tensorSquares).map { ($0.name, $1.squareRoot()) }
            clipGradientNorm(net.gradients, maxNorm: t.clipNorm, norm: norm)
            if let c = t.clipValue { clipGradientValue(net.gradients, clip: c) }
            optimizer.step(parameters: net.parameters, gradients: net.gradients, learningRate: lr)
            report.communicated(try gradientStep.updated(step: step))
            report.updated()
            try fault?.afterUpdate(step: step, rank: comm.rank, parameters: net.parameters)

            // With local SGD the replicas differ between averagings: checked when averaged.
            if step == steps || (t.checkEvery > 0 && step % t.checkEvery == 0 && !gradientStep.replicasApart) {
                try verifyReplicas(step: step)
            }
            let evalNow = step == steps || (t.evalEvery > 0 && step % t.evalEvery == 0)
            if evalNow {
                validation = try evaluate()
                if let v = validation { schedule.observe(validationLoss: v) }
            }
            if logNow || evalNow {
                try report.log(.init(step: step, loss: lastLoss, gradNorm: norm, learningRate: lr,
                                     validation: evalNow ? validation : nil, accuracy: validationAccuracy,
                                     diagnostics: diagnostics, tensorGradNorms: tensorGradNorms, skippedSteps: nonFinite.skippedSteps))
            }
            // Checked at the very end of the step (after evaluation and logging), so a signal
            // that arrived during them is acted on now, not a step later.
            try stopIfSignalled(step: step)
            if config.checkpoint.every > 0 && step % config.checkpoint.every == 0 && step != steps {
                try saveCheckpoint(step: step)
            }
        }
        if startStep == steps {
            try verifyReplicas(step: steps)
            validation = try evaluate()
            try report.logFinalEvaluation(step: steps, validation: validation)
        }
        try finish(steps: steps, validation: validation)
        return TrainResult(steps: steps, finalLoss: lastLoss, validationLoss: validation, parameterChecksum: (wholeModel ?? net).parameters.checksum())
    }

    /// After the last step: the final checkpoint, the model file and (text) a sample.
    func finish(steps: Int, validation: Double?) throws {
        let whole = try assembleWholeModel(everyRank: false)  // on rank 0
        let checksum = String((whole ?? network).parameters.checksum(), radix: 16)
        if let p = pipeline {
            console.info("replicas: every stage's parameters bitwise identical on its \(p.replicas) replica\(p.replicas == 1 ? "" : "s") (\(comm.size) ranks) at step \(steps) (checksum of the whole model \(checksum))")
        } else {
            console.info("replicas: parameters bitwise identical on all \(comm.size) rank\(comm.size == 1 ? "" : "s") at step \(steps) (checksum \(checksum))")
        }
        if let v = validation { console.info(Evaluation.describe(loss: v, accuracy: validationAccuracy, dataset: dataset)) }
        let final = try saveCheckpoint(step: steps)
        guard comm.rank == 0, let whole else { return }
        let outDir = config.output.directory
        try Checkpoint.write(path: "\(outDir)/model.safetensors", tensors: modelTensors(whole), metadata: modelMetadata(step: steps).encoded)
        console.info("wrote \(outDir)/model.safetensors, \(outDir)/metrics.jsonl and \(final)")
        if let text = dataset as? TextDataset, config.output.sampleLength > 0, !network.spec.bidirectional {
            let s = generate(text.vocabulary, length: config.output.sampleLength, temperature: config.output.sampleTemperature)
            console.info("sample (temperature \(config.output.sampleTemperature)):\n\(s)")
        }
    }

    // MARK: setup

    /// Everything before the first step, in an order every rank follows alike. Returns the step
    /// the run continues after (0, or the checkpoint's).
    func setUp() throws -> Int {
        let t = config.training, B = t.globalBatchSize, S = config.parallel.pipelineStages
        guard comm.size % S == 0 else {
            throw RNNDPError("\(config.source): parallel.pipeline_stages \(S) does not divide the \(comm.size) ranks: N = D x S ranks make D replicas of an S-stage pipeline; start a multiple of \(S) ranks",
                             collective: true)
        }
        let replicas = comm.size / S
        guard B >= replicas else {
            throw RNNDPError("\(config.source): training.global_batch_size \(B) is smaller than the number of \(S > 1 ? "pipeline replicas" : "ranks") \(replicas): every \(S > 1 ? "replica" : "rank") needs at least one sample",
                             collective: true)
        }
        // Setup that can fail on one rank alone (files): agreed on before any other collective.
        var resumeFile: SafeTensors.File?
        try Job.collectively(comm) {
            dataset = try makeDataset(config)
            if let path = resumePath {
                do { resumeFile = try Checkpoint.read(path: path) } catch let e as Checkpoint.Error {
                    throw RNNDPError(Checkpoint.resumeError(e, path: path))
                }
            }
        }
        let spec = try makeModelSpec(config, dataset: dataset)
        // Too large a model is one line on every rank, before anything is allocated.
        try Job.collectively(comm) {
            try MemoryEstimate(spec: spec, config: config, ranks: comm.size, steps: dataset.steps)
                .check(localRanks: comm.localSize, source: config.source)
        }
        let net = try setUpPipeline(spec: spec)
        network = net
        net.chunkSteps = config.parallel.chunkSteps
        // Batch norm's statistics come from the global batch: one allreduce per layer and pass.
        // A failure inside it is fatal for the job (the other ranks wait in the same collective).
        let communicator = dataComm!, out = console
        net.reduceAcrossRanks = { buffer in
            do { try communicator.allreduceSum(buffer) } catch {
                out.error("batch norm statistics: \(error)")
                communicator.abort(code: RNNDPError.runtimeFailure)
            }
        }
        let (threads, why) = chooseThreads()
        setBLASThreads(threads)
        let products = try Self.recurrentProducts()
        printBanner(spec: spec, threads: threads, why: why)
        if let p = pipeline { for line in p.describe(spec, steps: dataset.steps, chunkSteps: config.parallel.chunkSteps) { console.info(line) } }
        console.info(RecurrentProducts.summary(products))
        try checkShapes(spec: spec)
        batches = makeBatchSource(spec: spec)
        passes = BackwardPasses(network: net, source: batches, accumulate: t.accumulateSteps, steps: dataset.steps, bpttLength: t.bpttLength, seed: config.seed)
        let shard = dataComm.shard(of: B)
        console.info("batch: \(B) samples per step, T=\(dataset.steps); rank 0 takes rows \(shard.lowerBound)..<\(shard.upperBound)"
                     + (t.accumulateSteps > 1 ? " in \(t.accumulateSteps) micro-batches" : "")
                     + (passes.chunkLength < dataset.steps ? "; truncated BPTT in chunks of \(passes.chunkLength) steps" : ""))
        // A pipeline stage's optimizer updates (and keeps state for) the stage's tensors only.
        optimizer = makeOptimizer(t.optimizer, count: net.gradients.count, as: Float.self)
        gradientStep = try makeGradientStep()
        console.info(gradientStep.summary)
        schedule = LearningRateSchedule(base: t.learningRate, schedule: t.schedule)
        nonFinite = NonFiniteGuard(network: net, skip: t.skipNonFinite, maxSkipped: t.maxSkipped, console: console)
        let startStep = try initialState(resumeFile: resumeFile)
        guard startStep <= t.steps else {
            throw RNNDPError("--resume: the checkpoint is at step \(startStep), past training.steps \(t.steps); raise training.steps to continue", collective: true)
        }
        return startStep
    }

    /// The network this rank trains. With parallel.pipeline_stages: the layout, the two
    /// communicators split from the world (every rank calls both splits), this rank's stage of
    /// the network (its own tensors only) and its messages.
    func setUpPipeline(spec: ModelSpec) throws -> Network<Float> {
        let S = config.parallel.pipelineStages
        guard S > 1 else { dataComm = comm; return Network<Float>(spec: spec) }
        let split = PipelineLayout.split(config.parallel, spec: spec, steps: dataset.steps)
        let (p, stageComm, pipe, m) = try PipelineLayout.join(comm, layers: split, console: console)
        let net = Network<Float>(spec: spec, stageLayers: split[p.stage])
        net.pipe = m.ends
        (pipeline, dataComm, pipeComm, messages) = (p, stageComm, pipe, m)
        return net
    }

    /// The whole model's gradient norm from per-tensor sums of squares (summed over a pipeline's
    /// stages), the same bits whatever the stage split; fills `tensorSquares`.
    func gradientNorm() throws -> Double {
        let net = network!
        if tensorSquares.count != net.layout.views.count { tensorSquares = [Double](repeating: 0, count: net.layout.views.count) }
        let own = net.stageParameters, base = net.stageBase
        for (i, v) in net.layout.views.enumerated() {
            tensorSquares[i] = own.contains(v.offset) ? Float.sumOfSquares(net.gradients.pointer + (v.offset - base), v.count) : 0
        }
        try gradientStep.sumAcrossStages(&tensorSquares)
        return tensorSquares.reduce(0, +).squareRoot()
    }

    /// The whole model for a read: the training network without a pipeline. Under one, a whole
    /// network (no gradients) gets every stage's tensors and batch norm statistics gathered over
    /// the replica's stages: on every rank (`everyRank`: evaluation), or on world rank 0 only
    /// (files; the ranks of the other replicas take no part, and get nil). Collective.
    @discardableResult
    func assembleWholeModel(everyRank: Bool) throws -> Network<Float>? {
        guard let pipe = pipeComm, let p = pipeline else { wholeModel = network; return network }
        // Once per step boundary (every rank of the pipe agrees on `assembled`).
        if assembled && (!everyRank || wholeOnEveryRank) { return wholeModel }
        guard everyRank || p.replica == 0 else { return nil }
        let whole = Network<Float>(spec: network.spec, gradients: false)
        try gather(network.parameters, into: whole.parameters, ranges: p.tensorRanges(whole.spec, layout: whole.layout), over: pipe, everyRank: everyRank)
        if whole.runningStatistics.count > 0 {
            let perLayer = whole.runningStatistics.count / whole.spec.layers
            let own = network.stageLayers.lowerBound * perLayer..<network.stageLayers.upperBound * perLayer
            let part = Buffer<Float>(viewing: network.runningStatistics.pointer + own.lowerBound, count: own.count)
            try gather(part, into: whole.runningStatistics, ranges: p.layers.map { ($0.lowerBound * perLayer)..<($0.upperBound * perLayer) },
                       over: pipe, everyRank: everyRank)
        }
        (assembled, wholeOnEveryRank) = (true, everyRank)
        wholeModel = everyRank || pipe.rank == 0 ? whole : nil
        return wholeModel
    }
    private var assembled = false, wholeOnEveryRank = false

    private func gather(_ part: Buffer<Float>, into whole: Buffer<Float>, ranges: [Range<Int>], over pipe: Communicator, everyRank: Bool) throws {
        try pipe.gather(UnsafeBufferPointer(part.buffer), into: whole.buffer, ranges: ranges, root: everyRank ? nil : 0)
    }

    /// The optimizer's state in the whole model's layout for a checkpoint, on world rank 0 (the
    /// stages' parts gathered, as `assembleWholeModel`); nil on the ranks that take no part.
    func wholeOptimizerState() throws -> [(name: String, buffer: Buffer<Float>)]? {
        guard let pipe = pipeComm, let p = pipeline else { return optimizer.state }
        guard p.replica == 0 else { return nil }
        let ranges = p.tensorRanges(network.spec, layout: network.layout)
        return try optimizer.state.map { name, own in
            let all = Buffer<Float>(count: pipe.rank == 0 ? network.layout.count : 0)
            try gather(own, into: all, ranges: ranges, over: pipe, everyRank: false)
            return (name, all)
        }
    }

    /// The kernel of the per-step recurrent products (RNN_DP_PRODUCTS), or the error naming the bad value.
    public static func recurrentProducts() throws -> RecurrentProducts.Path {
        do { return try RecurrentProducts.checked() } catch { throw RNNDPError("\(error)", collective: true) }
    }

    /// Threads per rank: the configured number, or the node's cores divided among its ranks.
    func chooseThreads() -> (threads: Int, reason: String) {
        let cores = ProcessInfo.processInfo.activeProcessorCount
        if config.training.threads > 0 { return (config.training.threads, "training.threads") }
        // The bits of a BLAS product may depend on its thread count, which must not follow N.
        if config.training.microShards != nil { return (1, "training.reproducible; set training.threads for more, the same in every run you compare") }
        let t = max(1, cores / max(1, comm.localSize))
        return (t, "\(cores) cores / \(comm.localSize) rank\(comm.localSize == 1 ? "" : "s") on this node")
    }

    func printBanner(spec: ModelSpec, threads: Int, why: String) {
        console.info("rnn-dp train: \(config.source)")
        for (k, v) in config.resolved { console.info("  \(k): \(v)") }
        for w in config.warnings { console.warn(w) }
        console.info("world: \(comm.name); \(threads) BLAS thread\(threads == 1 ? "" : "s") per rank (\(why))")
        console.info("data: \(dataset.summary)")
        if let text = dataset as? TextDataset, text.droppedValidationCharacters > 0 {
            console.warn("\(text.droppedValidationCharacters) validation characters do not occur in the training part and were dropped")
        }
        let cellName = spec.cell == .rnn ? "rnn(\(spec.activation.rawValue))" : spec.cell.rawValue
        let embedding = (spec.bidirectional ? ", bidirectional" : "") + (spec.embeddingSize.map { ", input through an embedding E=\($0)" } ?? "")
        let dropouts = [("dropout", spec.dropout), ("input dropout", spec.inputDropout), ("head dropout", spec.headDropout)]
            .filter { $0.1 > 0 }.map { "\($0.0) \($0.1)" }
        console.info("model: \(spec.layers) x \(cellName) H=\(spec.hiddenSize), input \(spec.input)\(embedding), \(spec.outputSize) outputs \(spec.output.rawValue), \(network.layout.count) parameters"
                     + (dropouts.isEmpty ? "" : "; " + dropouts.joined(separator: ", ")))
    }

    /// Rules that need the data and the rank count (the config alone cannot decide them).
    func checkShapes(spec: ModelSpec) throws {
        let t = config.training, B = t.globalBatchSize
        let D = dataComm.size
        guard t.accumulateSteps <= B / D else {
            throw RNNDPError("\(config.source): training.accumulate_steps \(t.accumulateSteps) is more than the \(B / D) rows the smallest rank has (global_batch_size \(B) over \(D) \(pipeline == nil ? "ranks" : "replicas"))", collective: true)
        }
        if t.stateful, let text = dataset as? TextDataset, text.streamChunks(globalBatch: B) < 1 {
            throw RNNDPError("\(config.source): training.stateful: \(text.train.count) training characters in \(B) streams leave \(text.train.count / B) per stream, fewer than sequence_length + 1 = \(text.steps + 1)", collective: true)
        }
        if let a = dataset as? ArrayDataset, a.variableLength {
            if t.bpttLength > 0 { throw RNNDPError("\(config.source): training.bptt_length: truncated BPTT needs sequences of one length; this data's lengths differ", collective: true) }
        }
        if t.bpttLength > 0 && spec.output != .everyStep {
            throw RNNDPError("\(config.source): training.bptt_length: truncated BPTT needs a loss at every step (model.output: every_step)", collective: true)
        }
        if let M = t.microShards, M < D {
            throw RNNDPError("\(config.source): training.micro_shards \(M) is fewer than the \(D) \(pipeline == nil ? "ranks" : "pipeline replicas"): in reproducible mode every rank needs a micro-shard; raise training.micro_shards (a multiple of every rank count you use)", collective: true)
        }
    }

    /// Sampled windows, or (training.stateful, which the config allows for text only) streams.
    func makeBatchSource(spec: ModelSpec) -> BatchSource {
        let B = config.training.globalBatchSize
        if config.training.stateful, let text = dataset as? TextDataset {
            let streams = StatefulStreams(text, comm: dataComm, globalBatch: B, spec: spec)
            if let pipe = pipeComm { streams.stages = (pipe, network.stageLayers) }
            return streams
        }
        if let a = dataset as? ArrayDataset, a.variableLength {
            // Each global batch dealt to the shards the gradient step cuts it into.
            a.parts = config.training.microShards ?? dataComm.size
            console.info("lengths differ: packed batches (no padding computed)"
                         + (a.shuffle && a.bucketing ? ", length-bucketed global batches" : ", batches in file order (no bucketing)")
                         + ", rows dealt to \(a.parts) \(config.training.microShards == nil ? "ranks" : "micro-shards") with about equal time steps each")
        }
        return SampledWindows(dataset, globalBatch: B)
    }

    /// The one place the config's synchronization mode is read.
    func makeGradientStep() throws -> GradientStep {
        let t = config.training
        let mode: SynchronizationMode = t.microShards.map { .reproducible(microShards: $0) }
            ?? (t.localSGDSteps > 0 ? .localSGD(period: t.localSGDSteps)
                : .dataParallel(bucketBytes: Int(t.bucketMB * 1_048_576), compression: t.compression))
        // The step's communicator numbers the replicas of a stage; a fault names a world rank.
        let stepFault = fault.map { FaultInjection(kind: $0.kind, rank: $0.rank == comm.rank ? dataComm.rank : -1, step: $0.step) }
        let step = RNNTrain.makeGradientStep(mode, network: network, comm: dataComm, passes: passes, globalBatch: t.globalBatchSize, fault: stepFault)
        guard let p = pipeline, let pipe = pipeComm, let m = messages else { return step }
        return PipelineStep(inner: step, pipe: pipe, network: network, messages: m, layout: p)
    }

    /// Identical replicas: rank 0's initialization (or the checkpoint, or model.init_from),
    /// broadcast, then verified. Then the run takes its directory: nothing of a previous run is
    /// touched before the run is known to be valid.
    func initialState(resumeFile: SafeTensors.File?) throws -> Int {
        let net = network!
        var startStep = 0
        net.initializeParameters(seed: config.seed, settings: config.model.initialization)
        if let file = resumeFile {
            try Job.collectively(comm) { startStep = try restore(from: file) }
            console.info("resumed from \(resumePath!) at step \(startStep)")
        } else if let from = config.model.initFrom {
            // Under a pipeline the first replica's ranks each load their stage's tensors.
            try Job.collectively(comm) {
                guard dataComm.rank == 0 else { return }
                guard pipeline != nil else { return try loadParameters(from: from, into: net) }
                let whole = Network<Float>(spec: net.spec, gradients: false)
                try loadParameters(from: from, into: whole)
                net.parameters.pointer.update(from: whole.parameters.pointer + net.stageBase, count: net.parameters.count)
                net.runningStatistics.copy(from: whole.runningStatistics)
            }
            console.info("parameters: loaded from \(from)")
        }
        let outDir = config.output.directory
        var metrics: MetricsLog?
        try Job.collectively(comm) {
            guard comm.rank == 0 else { return }
            let intent: RunDirectory.Intent = resumeFile != nil ? .resume(step: startStep) : (overwrite ? .overwrite : .fresh)
            runDirectory = try RunDirectory.claim(output: outDir, checkpoints: config.checkpoint.directory, intent: intent)
            metrics = try MetricsLog(path: "\(outDir)/metrics.jsonl", append: resumeFile != nil)
        }
        // To every replica (of each stage).
        try dataComm.broadcast(net.parameters.buffer, root: 0)
        if net.runningStatistics.count > 0 { try dataComm.broadcast(net.runningStatistics.buffer, root: 0) }
        try verifyReplicas(step: startStep)
        report = StepReport(console: console, totalSteps: config.training.steps, startStep: startStep,
                            globalBatch: config.training.globalBatchSize, steps: dataset.steps, text: dataset is TextDataset)
        report.metrics = metrics
        if let a = dataset as? ArrayDataset, a.variableLength {
            let B = config.training.globalBatchSize
            report.balance = { a.balance(step: $0 - 1, globalBatch: B) }  // the data's steps count from 0
        }
        return startStep
    }

    // MARK: what every rank decides alike

    /// One allreduce(max) of the stop signal received on any rank; if there is one, every rank
    /// stops here together (after rank 0's checkpoint). Called exactly once per step on every path.
    func stopIfSignalled(step: Int) throws {
        var signal = [Double(Signals.received)]
        try comm.allreduceMax(&signal)
        guard signal[0] > 0 else { return }
        let path = try saveCheckpoint(step: step)
        throw ResumableStop(message: "\(Signals.name(Int32(signal[0]))) received: checkpoint written at step \(step) to \(path); continue with: rnn-dp train --resume \(config.checkpoint.directory)")
    }

    /// Compares a checksum of the parameters across ranks (under a pipeline, of each stage's
    /// tensors across the stage's replicas: rank r against rank r % S); a mismatch stops every
    /// rank. Whether the parameters are finite is then decided over all ranks alike.
    func verifyReplicas(step: Int) throws {
        try synchronizeParameters()
        let sums = try comm.allgather(network.parameters.checksum())
        let S = pipeline?.stages ?? 1
        let differ = sums.indices.filter { sums[$0] != sums[$0 % S] }
        guard differ.isEmpty else {
            let first = differ[0] % S, of = S == 1 ? "rank 0's" : "those of rank\(Set(differ.map { $0 % S }).count > 1 ? "s" : "") \(Set(differ.map { $0 % S }).sorted().map(String.init).joined(separator: ", ")) (the first replica of their stage)"
            throw RNNDPError("replicas diverged at step \(step): parameters of rank\(differ.count > 1 ? "s" : "") \(differ.map(String.init).joined(separator: ", ")) differ from \(of) (checksums \(differ.map { String(sums[$0], radix: 16) }.joined(separator: ", ")) vs \(String(sums[first], radix: 16)))",
                             exitCode: RNNDPError.replicasDiverged, collective: true)
        }
        var bad = [Float.allFinite(network.parameters.pointer, network.parameters.count) ? 0.0 : 1]
        if S > 1 { try comm.allreduceMax(&bad) }
        guard bad[0] == 0 else {
            throw RNNDPError("step \(step): the parameters are no longer finite; lower training.optimizer.learning_rate or set training.clip_norm",
                             exitCode: RNNDPError.runtimeFailure, collective: true)
        }
    }

    /// Before a read every rank must make alike (local SGD averages the parameters here).
    func synchronizeParameters() throws {
        report?.communicated(try gradientStep?.synchronizeParameters() ?? 0)
    }

    /// Mean validation loss over the fixed validation samples, sharded across ranks.
    func evaluate() throws -> Double? {
        try synchronizeParameters()
        let e = try evaluateValidation(network: assembleWholeModel(everyRank: true)!, dataset: dataset, comm: comm, std: (dataset as? SeriesDataset)?.std ?? 1)
        validationAccuracy = e?.accuracy
        return e?.loss
    }

    // MARK: checkpoints (the format: Checkpoint.swift)

    func modelMetadata(step: Int) -> ModelMetadata {
        ModelMetadata(step: step, config: config.resolvedText, layout: network.layout.views.map(\.name), dataset: dataset)
    }

    /// Rank 0 writes ckpt-<step> (atomically) and moves `latest`; returns its path on every rank.
    @discardableResult
    func saveCheckpoint(step: Int) throws -> String {
        try synchronizeParameters()
        try batches.assembleStages()
        let whole = try assembleWholeModel(everyRank: false)
        let optimizerState = try wholeOptimizerState()
        let dir = config.checkpoint.directory
        if comm.rank == 0 {
            var state = TrainingState(step: step, optimizer: config.training.optimizer.kind.rawValue, optimizerSteps: optimizer.steps)
            state.schedule = (schedule.plateauRate, schedule.best, schedule.badEvaluations, schedule.cooldownLeft)
            state.skippedSteps = nonFinite.skippedSteps
            state.skippedInARow = nonFinite.skippedInARow
            state.worldSize = comm.size
            state.globalBatch = config.training.globalBatchSize
            state.seed = config.seed
            var metadata = modelMetadata(step: step).encoded
            state.encode(into: &metadata)
            let tensors = modelTensors(whole!) + batches.checkpointTensors() + optimizerTensors(optimizerState!, layout: network.layout)
            let path = try Checkpoint.save(directory: dir, step: step, keep: config.checkpoint.keep, tensors: tensors, metadata: metadata)
            console.info("checkpoint: \(path)")
        }
        return "\(dir)/\(Checkpoint.fileName(step: step))"
    }

    /// Loads a checkpoint's parameters, running statistics, optimizer, stream and schedule state;
    /// returns its step. Every tensor must match the model built from the config.
    func restore(from file: SafeTensors.File) throws -> Int {
        let path = resumePath ?? "checkpoint"
        let state = try TrainingState(metadata: file.metadata, path: path)
        let name = config.training.optimizer.kind.rawValue
        if !state.optimizer.isEmpty && state.optimizer != name {
            throw RNNDPError("--resume: \(path): was written with optimizer \(state.optimizer), the config says \(name)")
        }
        let prefix = "--resume: \(path)"
        // Under a pipeline the file is read into a whole model, of which this stage keeps its part.
        let model = pipeline == nil ? network! : Network<Float>(spec: network.spec, gradients: false)
        var expected = try restoreModelTensors(file, into: model, prefix: prefix)
        let optimizerState = pipeline == nil ? optimizer.state : optimizer.state.map { ($0.name, Buffer<Float>(count: network.layout.count)) }
        expected += try restoreOptimizerTensors(file, into: optimizerState, layout: network.layout, prefix: prefix)
        if pipeline != nil {
            let base = network.stageBase
            network.parameters.pointer.update(from: model.parameters.pointer + base, count: network.parameters.count)
            network.runningStatistics.copy(from: model.runningStatistics)
            for ((_, own), (_, all)) in zip(optimizer.state, optimizerState) { own.pointer.update(from: all.pointer + base, count: own.count) }
        }
        expected += try batches.restore(from: file, prefix: prefix)
        let known = Set(expected)
        if let extra = file.tensors.first(where: { !known.contains($0.name) }) {
            throw RNNDPError("--resume: \(path): tensor '\(SafeTensors.printable(extra.name))' does not belong to this model and optimizer")
        }
        optimizer.steps = state.optimizerSteps
        warnIfDataOrderChanged(storedConfig: file.metadata["config"] ?? "")
        if let s = state.schedule { schedule.restore(rate: s.rate, best: s.best, badEvaluations: s.badEvaluations, cooldownLeft: s.cooldownLeft) }
        nonFinite.skippedSteps = state.skippedSteps
        nonFinite.skippedInARow = state.skippedInARow
        return state.step
    }

    /// Keys that decide which samples a step sees: a change breaks the continuation of the run.
    func warnIfDataOrderChanged(storedConfig: String) {
        let stored = Dictionary(ConfigLoader.storedValues(storedConfig), uniquingKeysWith: { a, _ in a })
        let now = Dictionary(uniqueKeysWithValues: config.resolved.map { ($0.key, $0.value.description) })
        for key in ["seed", "training.global_batch_size", "training.sequence_length", "training.accumulate_steps", "training.bptt_length", "training.stateful", "data.path"] {
            if let a = stored[key], let b = now[key], a != b {
                console.warn("--resume: \(key) was \(a) in the checkpoint and is \(b) now: the run continues with a different data order or batch")
            }
        }
    }

    /// Text generated by the model one character at a time, carrying the hidden state.
    public func generate(_ vocab: Vocabulary, length: Int, temperature: Double) -> String {
        Generator.generate(wholeModel ?? network, vocab: vocab, prime: [vocab.token("\n") ?? 0], length: length, temperature: temperature, seed: config.seed)
    }
}
