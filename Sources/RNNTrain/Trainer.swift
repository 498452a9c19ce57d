import Foundation
import RNN
import RNNData
import RNNDistributed

/// Builds the dataset a config describes.
/// - vocabulary, normalization: a trained model's own (evaluating it), instead of the data's.
public func makeDataset(_ config: TrainConfig, vocabulary: Vocabulary? = nil,
                        normalization: (mean: Double, std: Double)? = nil) throws -> Dataset {
    let d = config.data
    let t = config.training
    do {
        switch d.kind {
        case "text":
            return try TextDataset(path: d.path!, validationFraction: d.validationFraction, steps: t.sequenceLength,
                                   output: config.model.output ?? .everyStep, seed: config.seed, maxValidation: t.evalSamples,
                                   vocabulary: vocabulary)
        case "csv":
            return try SeriesDataset(path: d.path!, column: d.column, validationFraction: d.validationFraction,
                                     interpolateMissing: d.interpolateMissing, steps: t.sequenceLength,
                                     output: config.model.output ?? .lastStep, seed: config.seed, maxValidation: t.evalSamples,
                                     normalization: normalization)
        case "npy":
            return try ArrayDataset.fromNumpy(inputs: d.inputs!, targets: d.targets!, validationInputs: d.validationInputs,
                                              validationTargets: d.validationTargets, validationFraction: d.validationFraction,
                                              shuffle: d.shuffle, seed: config.seed, maxValidation: t.evalSamples,
                                              vocabulary: d.vocabulary, classes: d.classes)
        case "ts":
            return try ArrayDataset.fromTS(path: d.path!, validationPath: d.validationPath, shuffle: d.shuffle,
                                           seed: config.seed, maxValidation: t.evalSamples)
        default:
            return try AddingProblem(length: t.sequenceLength, seed: config.seed, validationSamples: t.evalSamples)
        }
    } catch let e as DataError {
        throw RNNDPError("data: \(e.message)")
    }
}

/// The model a config and its dataset describe. For npy data the loss and the output mode follow
/// from the arrays' types and shapes; a config that says otherwise is an error.
public func makeModelSpec(_ config: TrainConfig, dataset: Dataset) throws -> ModelSpec {
    var loss = config.training.loss, output = config.model.output
    if let a = dataset as? ArrayDataset {
        func conflict(_ key: String, _ given: String, _ data: String) -> RNNDPError {
            RNNDPError("\(config.source): \(key): \(given) does not match the data, whose targets call for \(data)", collective: true)
        }
        if let l = loss, l != a.loss { throw conflict("training.loss", l.rawValue, a.loss.rawValue) }
        if let o = output, o != a.output { throw conflict("model.output", o.rawValue, a.output.rawValue) }
        loss = a.loss
        output = a.output
    }
    return makeModelSpec(config, input: dataset.input, outputSize: dataset.outputSize, output: output!, loss: loss!)
}

/// The model's shape from the config, given what the data (or a model file) decides.
func makeModelSpec(_ config: TrainConfig, input: InputKind, outputSize: Int, output: OutputMode, loss: LossKind) -> ModelSpec {
    var spec = ModelSpec(cell: config.model.cell, activation: config.model.activation, input: input,
                         hiddenSize: config.model.hiddenSize, layers: config.model.layers, outputSize: outputSize,
                         output: output, loss: loss, averageOverTime: config.training.averageOverTime)
    spec.leakySlope = config.model.leakySlope
    spec.learnedInitialState = config.model.learnedInitialState
    spec.layerNorm = config.model.layerNorm
    spec.batchNorm = config.model.batchNorm
    return spec
}

/// Batch norm's running statistics as tensors rnn.bn_running_mean_l{k} and rnn.bn_running_var_l{k}
/// (buffers, like PyTorch's BatchNorm running_mean / running_var; not trained parameters).
public func runningStatisticsTensors(_ net: Network<Float>) -> [SafeTensors.Tensor] {
    guard net.spec.batchNorm else { return [] }
    let gh = net.spec.cell.gates * net.spec.hiddenSize
    let r = net.runningStatistics.array
    var out: [SafeTensors.Tensor] = []
    for k in 0..<net.spec.layers {
        let mean = Array(r[(2 * k * gh)..<((2 * k + 1) * gh)])
        let variance = Array(r[((2 * k + 1) * gh)..<((2 * k + 2) * gh)])
        out.append(SafeTensors.Tensor(name: "rnn.bn_running_mean_l\(k)", shape: [gh], values: mean))
        out.append(SafeTensors.Tensor(name: "rnn.bn_running_var_l\(k)", shape: [gh], values: variance))
    }
    return out
}

/// Copies the tensors of a safetensors file into the parameters by PyTorch name, requiring every
/// tensor of the layout, no other (optimizer state and metadata are ignored), and equal shapes.
/// Batch norm's running statistics are loaded when present.
/// model.init_from: a file rnn-dp wrote (it has rnn-dp's `format` in its metadata) is verified as
/// `--resume`, `eval` and `sample` verify one (format and checksum, `Checkpoint.decode`); a file
/// from elsewhere (PyTorch's `save_file`) carries no checksum and is checked for structure only.
public func loadParameters(from path: String, into net: Network<Float>) throws {
    let file: SafeTensors.File
    do {
        let bytes: [UInt8]
        (file, bytes) = try SafeTensors.readWithBytes(path: path)
        if file.metadata["format"] != nil || file.metadata["checksum"] != nil { try Checkpoint.verify(file, bytes: bytes, name: path) }
    } catch let e as SafeTensors.FormatError {
        throw RNNDPError("model.init_from: \(e.message)")
    } catch let e as Checkpoint.Error {
        throw RNNDPError("model.init_from: \(e.message)")
    }
    try loadParameters(from: file, path: path, into: net, context: "model.init_from")
}

/// Copies tensor `name` into `buffer` at `offset`, requiring it with exactly `shape`. Errors
/// start with `prefix` (the option and the file).
func copyTensor(_ file: SafeTensors.File, _ name: String, shape: [Int], into buffer: Buffer<Float>, at offset: Int, prefix: String) throws {
    guard let t = file.tensor(name) else { throw RNNDPError("\(prefix): no tensor '\(name)' (expected shape \(shape))") }
    guard t.shape == shape else { throw RNNDPError("\(prefix): tensor '\(name)' has shape \(t.shape), this model needs \(shape)") }
    for (i, x) in t.values.enumerated() { buffer[offset + i] = x }
}

/// - context: the option the file came from, leading the error messages ("model.init_from"), or
///   nil for a file named on its own.
public func loadParameters(from file: SafeTensors.File, path: String, into net: Network<Float>, context: String? = "model.init_from") throws {
    let prefix = context.map { "\($0): \(path)" } ?? path
    let running = runningStatisticsTensors(net)
    let model = file.tensors.filter { t in !t.name.hasPrefix("optimizer.") && !running.contains { $0.name == t.name } }
    let names = Set(net.layout.views.map(\.name))
    if let extra = model.first(where: { !names.contains($0.name) }) {
        throw RNNDPError("\(prefix): tensor '\(SafeTensors.printable(extra.name))' \(extra.shape) is not a parameter of this model (\(net.layout.views.map(\.name).joined(separator: ", ")))")
    }
    for v in net.layout.views {
        try copyTensor(file, v.name, shape: v.shape, into: net.parameters, at: v.offset, prefix: prefix)
    }
    // Running statistics are loaded when present (a file from PyTorch has none).
    for (i, r) in running.enumerated() where file.tensor(r.name) != nil {
        try copyTensor(file, r.name, shape: r.shape, into: net.runningStatistics, at: i * r.values.count, prefix: prefix)
    }
}

/// What a finished run reports (also used by tests).
public struct TrainResult {
    public var steps: Int
    public var finalLoss: Double
    public var validationLoss: Double?
    public var parameterChecksum: UInt64
}

/// The data-parallel training loop (docs/ARCHITECTURE.md, "A training step"). Every rank runs it;
/// they differ only in which rows of each global batch they compute.
public final class Trainer {
    public let config: TrainConfig
    let comm: Communicator
    let console: Console
    public private(set) var dataset: Dataset!
    public private(set) var network: Network<Float>!
    var optimizer: (any Optimizer<Float>)!
    var schedule = LearningRateSchedule(base: 0, schedule: .constant)
    /// Fraction of validation terms whose arg-max is the target, after `evaluate` (cross-entropy).
    public private(set) var validationAccuracy: Double?
    var metrics: MetricsLog?

    /// A checkpoint to continue from (`train --resume`).
    public let resumePath: String?
    /// The communicator with the collective watchdog, when one runs.
    var watched: WatchedCommunicator?
    /// Updates skipped for a non-finite gradient (training.on_nonfinite: skip), over the run.
    var skippedSteps = 0
    /// The bucketed, overlapped gradient exchange (training.bucket_mb > 0 and more than one rank).
    var exchange: GradientExchange?
    var exchangeError: Error?
    var timing = StepTiming()
    var nanFaultStep: Int?
    /// Consecutive skipped steps (saved in checkpoints, so a resumed run counts on).
    var skippedInARow = 0
    var resumedSkippedInARow = 0
    var compressionScratch: [UInt16] = []
    /// training.reproducible: the exact exchange, and the gradients of this rank's micro-shards
    /// but the last, (P) each.
    var fixedPointReduction: FixedPointReduction?
    /// Local SGD: the replicas have updated on their own since they were last averaged.
    var replicasApart = false
    /// training.stateful: the text dataset read as streams.
    var streams: TextDataset?
    /// Workspaces of the step, reused so that a step allocates nothing: this rank's batch, the
    /// state carried into the next pass (L, C, rows, H), the loss sums (loss, terms, correct,
    /// non-finite flag) and, with batch norm, the running statistics before the step.
    var stepBatch = Batch(batchSize: 0, steps: 0)
    var chunkState: [Float] = []
    var lossSums = [Double](repeating: 0, count: 4)
    var runningBefore: Buffer<Float>?
    /// Whether the exchange hooks installed on the network act in the current backward pass.
    var exchangeArmed = false
    /// Called at the start of every step with its number (tests: allocation counting).
    var stepObserver: ((Int) -> Void)?

    /// Per-step compute, communication and exposed (waited-for) communication times, averaged
    /// over a log interval.
    struct StepTiming {
        var compute = 0.0, communication = 0.0, exposed = 0.0, steps = 0
        mutating func add(compute c: Double, communication m: Double, exposed e: Double) {
            compute += c; communication += m; exposed += e; steps += 1
        }
        mutating func meanAndReset() -> (Double, Double, Double) {
            let n = Double(max(steps, 1))
            defer { self = StepTiming() }
            return (compute / n, communication / n, exposed / n)
        }
    }

    /// train --overwrite: move a previous run's files aside instead of refusing the directory.
    public let overwrite: Bool
    /// The lock on output.directory while the run lives (rank 0).
    var runDirectory: RunDirectory?

    public init(config: TrainConfig, comm: Communicator, console: Console, resume: String? = nil, overwrite: Bool = false) {
        self.overwrite = overwrite
        self.config = config
        if config.training.timeoutSeconds > 0 && comm.size > 1 {
            let w = WatchedCommunicator(comm, timeout: config.training.timeoutSeconds)
            self.comm = w
            watched = w
        } else {
            self.comm = comm
        }
        self.console = console
        resumePath = resume
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

    @discardableResult
    public func run() throws -> TrainResult {
        let B = config.training.globalBatchSize
        guard B >= comm.size else {
            throw RNNDPError("\(config.source): training.global_batch_size \(B) is smaller than the number of ranks \(comm.size): every rank needs at least one sample",
                             collective: true)
        }
        // Setup that can fail on one rank alone (files): agreed on before any other collective.
        let outDir = config.output.directory
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
        let net = Network<Float>(spec: spec)
        network = net
        // Batch norm's statistics come from the global batch: one allreduce per layer and pass.
        // A failure inside it is fatal for the job (the other ranks wait in the same collective).
        let communicator = self.comm, out = self.console
        net.reduceAcrossRanks = { buffer in
            do { try communicator.allreduceSum(buffer) } catch {
                out.error("batch norm statistics: \(error)")
                communicator.abort(code: RNNDPError.runtimeFailure)
            }
        }
        let (threads, why) = chooseThreads()
        setBLASThreads(threads)

        console.info("rnn-dp train: \(config.source)")
        for (k, v) in config.resolved { console.info("  \(k): \(v)") }
        for w in config.warnings { console.warn(w) }
        console.info("world: \(comm.name); \(threads) BLAS thread\(threads == 1 ? "" : "s") per rank (\(why))")
        console.info("data: \(dataset.summary)")
        if let text = dataset as? TextDataset, text.droppedValidationCharacters > 0 {
            console.warn("\(text.droppedValidationCharacters) validation characters do not occur in the training part and were dropped")
        }
        let cellName = spec.cell == .rnn ? "rnn(\(spec.activation.rawValue))" : spec.cell.rawValue
        console.info("model: \(spec.layers) x \(cellName) H=\(spec.hiddenSize), input \(spec.input), \(spec.outputSize) outputs \(spec.output.rawValue), \(net.layout.count) parameters")
        let shardRows = comm.shard(of: B)
        let a = config.training.accumulateSteps
        guard a <= B / comm.size else {
            throw RNNDPError("\(config.source): training.accumulate_steps \(a) is more than the \(B / comm.size) rows the smallest rank has (global_batch_size \(B) over \(comm.size) ranks)", collective: true)
        }
        if config.training.stateful {
            let text = dataset as! TextDataset  // the config requires text data
            guard text.streamChunks(globalBatch: B) >= 1 else {
                throw RNNDPError("\(config.source): training.stateful: \(text.train.count) training characters in \(B) streams leave \(text.train.count / B) per stream, fewer than sequence_length + 1 = \(text.steps + 1)", collective: true)
            }
            streams = text
            streamState = [Float](repeating: 0, count: net.stateCount * B)
            nextStreamState = streamState
        }
        if config.training.bpttLength > 0 && spec.output != .everyStep {
            throw RNNDPError("\(config.source): training.bptt_length: truncated BPTT needs a loss at every step (model.output: every_step)", collective: true)
        }
        console.info("batch: \(B) samples per step, T=\(dataset.steps); rank 0 takes rows \(shardRows.lowerBound)..<\(shardRows.upperBound)"
                     + (a > 1 ? " in \(a) micro-batches" : "") + (chunkLength < dataset.steps ? "; truncated BPTT in chunks of \(chunkLength) steps" : ""))

        optimizer = makeOptimizer(config.training.optimizer, count: net.layout.count, as: Float.self)
        let compression = config.training.compression
        if let M = config.training.microShards {
            guard M >= comm.size else {
                throw RNNDPError("\(config.source): training.micro_shards \(M) is fewer than the \(comm.size) ranks: in reproducible mode every rank needs a micro-shard; raise training.micro_shards (a multiple of every rank count you use)", collective: true)
            }
            // Batch norm per micro-shard (ghost batch norm), not across ranks.
            net.reduceAcrossRanks = nil
            fixedPointReduction = FixedPointReduction(comm: comm, count: net.layout.count, segments: net.layout.views.map(\.range))
            let mine = Shard.rows(globalBatch: M, rank: comm.rank, size: comm.size)
            console.info("exchange: reproducible, \(M) fixed micro-shards of about \(B / M) samples summed exactly in 64-bit fixed point; rank 0 computes micro-shards \(mine.lowerBound)..<\(mine.upperBound)")
        } else if compression != .none {
            compressionScratch = [UInt16](repeating: 0, count: net.layout.count)
            console.info("exchange: gradients as \(compression.rawValue), one allreduce after the backward pass")
        } else if config.training.localSGDSteps > 0 {
            console.info("exchange: local SGD, parameters averaged over ranks every \(config.training.localSGDSteps) step\(config.training.localSGDSteps == 1 ? "" : "s") (and before every evaluation, replica check and checkpoint)")
        } else if config.training.bucketMB > 0 && comm.size > 1 {
            let e = GradientExchange(comm: comm, buffer: net.gradients.buffer, bucketBytes: Int(config.training.bucketMB * 1_048_576))
            exchange = e
            // Installed once; `exchangeArmed` says in which backward pass they act.
            net.onGradientsFinal = { [unowned self] offset in
                guard self.exchangeArmed else { return }
                do { try e.ready(from: offset) } catch { self.exchangeError = self.exchangeError ?? error }
            }
            net.onProgress = { [unowned self] in
                guard self.exchangeArmed else { return }
                do { try e.progress() } catch { self.exchangeError = self.exchangeError ?? error }
            }
            console.info("exchange: \(e.buckets.count) bucket\(e.buckets.count == 1 ? "" : "s") of up to \(config.training.bucketMB) MiB, started during the backward pass")
        }
        schedule = LearningRateSchedule(base: config.training.learningRate, schedule: config.training.schedule)
        // Identical replicas: rank 0's initialization (or the checkpoint), broadcast, then verified.
        var startStep = 0
        net.initializeParameters(seed: config.seed, settings: config.model.initialization)
        if let file = resumeFile {
            try Job.collectively(comm) { startStep = try restore(from: file) }
            console.info("resumed from \(resumePath!) at step \(startStep)")
        } else if let from = config.model.initFrom {
            try Job.collectively(comm) { if comm.rank == 0 { try loadParameters(from: from, into: net) } }
            console.info("parameters: loaded from \(from)")
        }
        // The run is valid: now it takes its directory (nothing of a previous run was touched before).
        try Job.collectively(comm) {
            guard comm.rank == 0 else { return }
            let intent: RunDirectory.Intent = resumeFile != nil ? .resume(step: startStep) : (overwrite ? .overwrite : .fresh)
            runDirectory = try RunDirectory.claim(output: outDir, checkpoints: config.checkpoint.directory, intent: intent)
            metrics = try MetricsLog(path: "\(outDir)/metrics.jsonl", append: resumeFile != nil)
        }
        defer { runDirectory?.release(); runDirectory = nil }
        try comm.broadcast(net.parameters.buffer, root: 0)
        if net.runningStatistics.count > 0 { try comm.broadcast(net.runningStatistics.buffer, root: 0) }
        try verifyReplicas(step: startStep)

        let T = dataset.steps
        let steps = config.training.steps
        guard startStep <= steps else {
            throw RNNDPError("--resume: the checkpoint is at step \(startStep), past training.steps \(steps); raise training.steps to continue", collective: true)
        }
        var lastLoss = Double.nan
        var intervalStart = monotonicSeconds()
        var intervalSteps = 0
        let runStart = intervalStart
        var validation: Double?
        let fault = FaultInjection.fromEnvironment()
        // Every rank drops the exchange hooks at the injected step, so collectives stay in step.
        if let f = fault, f.kind == .nan { nanFaultStep = f.step }
        let text = config.data.kind == "text"
        let localSGD = config.training.localSGDSteps > 0
        skippedInARow = resumedSkippedInARow

        if net.spec.batchNorm { runningBefore = Buffer(count: net.runningStatistics.count) }
        for step in (startStep + 1)..<(steps + 1) {
            stepObserver?(step)
            watched?.step = step
            let lr = schedule.learningRate(step: step - 1)
            let logNow = step % config.output.logEvery == 0 || step == steps
            net.gradients.zero()
            // Batch norm's running statistics move in every forward pass; a step whose gradient
            // turns out non-finite must not leave them changed (they may hold the NaN too).
            runningBefore?.copy(from: net.runningStatistics)
            let computeStart = monotonicSeconds()
            // The global loss sums (loss, terms, correct) and diagnostic sums of the step, and the
            // summed gradient in the gradient buffer.
            var diagnosticTotals: [Double]?
            if fixedPointReduction != nil {
                let here = fault.map { $0.rank == comm.rank && $0.step == step } ?? false
                (lossSums, diagnosticTotals) = try reproducibleGradients(step: step, diagnostics: logNow, injectNaN: here && fault?.kind == .nan,
                                                                         hang: here && fault?.kind == .hang)
                let t = monotonicSeconds() - computeStart
                timing.add(compute: t, communication: 0, exposed: 0)
            } else {
                exchange?.begin()
                let (local, diagnosticSums) = computeGradients(step: step, rows: shardRows, diagnostics: logNow)
                if let f = fault, f.rank == comm.rank, f.step == step {
                    if f.kind == .nan { net.gradients[0] = .nan }
                    if f.kind == .hang { while true { sleep(60) } }
                }
                // The exchange: sum of per-sample gradients over ranks, then divide by the global
                // count. In buckets, most of it already overlapped the backward pass; finish()
                // waits for the rest.
                if let error = exchangeError { throw error }
                let computeEnd = monotonicSeconds()
                if localSGD {
                    // No gradient exchange: each rank steps with its own shard's mean gradient.
                    timing.add(compute: computeEnd - computeStart, communication: 0, exposed: 0)
                } else if let exchange {
                    try exchange.finish()
                    timing.add(compute: computeEnd - computeStart, communication: exchange.communicationSeconds, exposed: exchange.exposedSeconds)
                } else {
                    if compression != .none {
                        try compressionScratch.withUnsafeMutableBufferPointer {
                            try compression.allreduce(net.gradients.buffer, scratch: $0, comm: comm)
                        }
                    } else {
                        try comm.allreduceSum(net.gradients.buffer)
                    }
                    let t = monotonicSeconds() - computeEnd
                    timing.add(compute: computeEnd - computeStart, communication: t, exposed: t)
                }
                // With local SGD, whether any rank's gradient is non-finite travels with the loss
                // sums, so that every rank decides the same.
                let localBad = localSGD && !Float.allFinite(net.gradients.pointer, net.gradients.count)
                lossSums[0] = local.sum; lossSums[1] = Double(local.count); lossSums[2] = Double(local.correct); lossSums[3] = localBad ? 1 : 0
                try comm.allreduceSum(&lossSums)
                // Diagnostics on log steps, from values summed across ranks (N-independent).
                if var sums = diagnosticSums {
                    try comm.allreduceSum(&sums)
                    diagnosticTotals = sums
                }
            }
            if streams != nil { try exchangeStreamState() }
            net.normalizeGradients(globalSamples: localSGD ? shardRows.count : B, steps: T)
            lastLoss = lossSums[0] / lossSums[1]
            // Every rank holds the same reduced gradient (or, with local SGD, the same flag), so
            // every rank decides the same here.
            let finite = localSGD ? lossSums[3] == 0 : Float.allFinite(net.gradients.pointer, net.gradients.count)
            if !(lastLoss.isFinite && finite) {
                let bad = nonFiniteTensors()
                if let saved = runningBefore { net.runningStatistics.copy(from: saved) }
                if config.training.skipNonFinite && skippedInARow + 1 < config.training.maxSkipped {
                    skippedInARow += 1
                    skippedSteps += 1
                    console.warn("step \(step): non-finite loss (\(lastLoss)) or gradient in \(bad.joined(separator: ", ")): update skipped (\(skippedInARow) in a row, \(skippedSteps) in all)")
                    try stopIfSignalled(step: step)
                    continue
                }
                let saved = try saveCheckpoint(step: step - 1)
                let why = config.training.skipNonFinite ? "\(config.training.maxSkipped) steps in a row had" : "step \(step) has"
                throw RNNDPError("\(why) a non-finite loss (\(lastLoss)) or gradient (in \(bad.joined(separator: ", "))); the last good state (step \(step - 1)) is in \(saved); lower training.optimizer.learning_rate or set training.clip_norm",
                                 exitCode: RNNDPError.runtimeFailure, collective: true)
            }
            skippedInARow = 0
            if streams != nil { acceptStreamState() }
            var diagnostics: Diagnostics?
            var tensorGradNorms: [(name: String, norm: Double)] = []
            if let sums = diagnosticTotals {
                diagnostics = Diagnostics(sums: sums, spec: net.spec, steps: lastChunkLength)
                tensorGradNorms = tensorNorms(net.gradients, layout: net.layout)
            }
            let norm = clipGradientNorm(net.gradients, maxNorm: config.training.clipNorm)
            if let c = config.training.clipValue { clipGradientValue(net.gradients, clip: c) }
            optimizer.step(parameters: net.parameters, gradients: net.gradients, learningRate: lr)
            if localSGD {
                replicasApart = true
                if step % config.training.localSGDSteps == 0 { try averageParameters() }
            }
            intervalSteps += 1
            if let f = fault, f.rank == comm.rank, f.step == step {
                switch f.kind {
                case .perturb: net.parameters[0] += 1e-3
                case .throw: throw RNNDPError("injected failure at step \(step) (RNN_DP_FAULT)", exitCode: RNNDPError.runtimeFailure)
                case .nan, .hang: break
                }
            }

            // With local SGD the replicas differ between averagings: checked when averaged.
            if step == steps || (config.training.checkEvery > 0 && step % config.training.checkEvery == 0 && !replicasApart) {
                try verifyReplicas(step: step)
            }
            let evalNow = step == steps || (config.training.evalEvery > 0 && step % config.training.evalEvery == 0)
            if evalNow {
                validation = try evaluate()
                if let v = validation { schedule.observe(validationLoss: v) }
            }
            if logNow || evalNow {
                let now = monotonicSeconds()
                let stepTime = (now - intervalStart) / Double(max(intervalSteps, 1))
                intervalStart = now
                intervalSteps = 0
                let perSecond = Double(B * (text ? T : 1)) / stepTime
                var line = String(format: "step %d/%d | loss %.4f | grad norm %.4f | lr %.3g | %.1f ms/step | %.0f %@",
                                  step, steps, lastLoss, norm, lr, stepTime * 1000, perSecond, text ? "tok/s" : "samples/s")
                if evalNow, let v = validation { line += String(format: " | val loss %.4f", v) }
                if evalNow, !text, let acc = validationAccuracy { line += String(format: " | val acc %.1f%%", acc * 100) }
                // Elapsed since this process started; the ETA from this run's mean step time.
                let elapsed = now - runStart, done = step - startStep
                line += " | elapsed \(Console.duration(elapsed))"
                if step < steps && done > 0 { line += " | ETA \(Console.duration(elapsed / Double(done) * Double(steps - step)))" }
                console.info(line)
                let (compute, communication, exposed) = timing.meanAndReset()
                var record: [(String, Any?)] = [("step", step), ("loss", lastLoss), ("grad_norm", norm), ("lr", lr),
                                                ("step_time", stepTime), ("compute_time", compute), ("comm_time", communication),
                                                ("exposed_comm_time", exposed), (text ? "tokens_per_s" : "samples_per_s", perSecond),
                                                ("elapsed", now - runStart), ("samples_seen", step * B),
                                                ("val_loss", evalNow ? validation : nil), ("val_accuracy", evalNow ? validationAccuracy : nil)]
                if skippedSteps > 0 { record.append(("skipped_steps", skippedSteps)) }
                if let d = diagnostics {
                    console.info("  " + describe(d))
                    record.append(("diagnostics", [("grad_norms", tensorGradNorms.map { ($0.name, $0.norm as Any?) }),
                                                   ("dh_ratio", d.dhRatio), ("dh_norms", d.dhNorms), ("saturated", d.saturated),
                                                   ("near_dead", d.nearDead), ("dead_units", d.deadUnits)] as [(String, Any?)]))
                }
                try metrics?.write(record)
            }
            // Checked at the very end of the step (after evaluation and logging), so a signal
            // that arrived during them is acted on now, not a step later.
            try stopIfSignalled(step: step)
            if config.checkpoint.every > 0 && step % config.checkpoint.every == 0 && step != steps {
                _ = try saveCheckpoint(step: step)
            }
        }
        if startStep == steps {
            try verifyReplicas(step: steps)
            validation = try evaluate()
            try metrics?.write([("step", steps), ("val_loss", validation), ("elapsed", monotonicSeconds() - runStart)])
        }
        console.info("replicas: parameters bitwise identical on all \(comm.size) rank\(comm.size == 1 ? "" : "s") at step \(steps) (checksum \(String(net.parameters.checksum(), radix: 16)))")
        if let v = validation { console.info(describeValidation(v)) }
        let final = try saveCheckpoint(step: steps)
        if comm.rank == 0 {
            try writeModel(path: "\(outDir)/model.safetensors", step: steps)
            console.info("wrote \(outDir)/model.safetensors, \(outDir)/metrics.jsonl and \(final)")
            if let text = dataset as? TextDataset, config.output.sampleLength > 0 {
                let s = generate(text.vocabulary, length: config.output.sampleLength,
                                 temperature: config.output.sampleTemperature)
                console.info("sample (temperature \(config.output.sampleTemperature)):\n\(s)")
            }
        }
        return TrainResult(steps: steps, finalLoss: lastLoss, validationLoss: validation,
                           parameterChecksum: net.parameters.checksum())
    }

    /// Steps per backward pass: training.bptt_length, or the whole sequence.
    var chunkLength: Int {
        let k = config.training.bpttLength
        return k > 0 ? min(k, dataset.steps) : dataset.steps
    }

    /// Steps of a sequence's last chunk (the pass the diagnostics come from): shorter than
    /// `chunkLength` when it does not divide T.
    var lastChunkLength: Int {
        let T = dataset.steps, k = chunkLength
        return T - (T - 1) / k * k
    }

    /// This rank's gradient sum for a step: its rows in `accumulate_steps` micro-batches, each in
    /// chunks of `bptt_length` steps (see `gradientOfRows`). Every rank makes the same number of
    /// forward passes, which batch norm's reductions require. With diagnostics, also their
    /// (additive) sums, per micro-batch; with truncated BPTT the per-step norms are those of each
    /// micro-batch's last chunk.
    func computeGradients(step: Int, rows: Range<Int>, diagnostics: Bool) -> (LossStats, [Double]?) {
        let a = config.training.accumulateSteps
        var stats = LossStats()
        var sums: [Double]?
        for m in 0..<a {
            let lo = rows.lowerBound + m * rows.count / a, hi = rows.lowerBound + (m + 1) * rows.count / a
            let (s, d) = gradientOfRows(step: step, rows: lo..<hi, diagnostics: diagnostics, lastOfStep: m == a - 1)
            stats += s
            if let d { sums = sums.map { zip($0, d).map { $0 + $1 } } ?? d }
        }
        return (stats, sums)
    }

    /// Adds to the gradient buffer the gradient of global rows `rows` of this step's batch, in
    /// chunks of `bptt_length` steps with the hidden state carried from chunk to chunk (no gradient
    /// across the boundary). `lastOfStep`: the pass after which the gradients are final, which
    /// drives the bucketed exchange.
    func gradientOfRows(step: Int, rows: Range<Int>, diagnostics: Bool, lastOfStep: Bool) -> (LossStats, [Double]?) {
        let net = network!
        let T = dataset.steps, k = chunkLength, B = config.training.globalBatchSize
        var stats = LossStats()
        var sums: [Double]?
        // The batch and the carried state live in workspaces reused from step to step.
        let stateCount = net.stateCount * rows.count
        if chunkState.count != stateCount { chunkState = [Float](repeating: 0, count: stateCount) }
        var carried = false  // chunkState holds the initial state of the next pass
        if let text = streams {
            // Stateful streams: these rows' state from the previous step, unless a pass restarts.
            text.fillStreamBatch(&stepBatch, step: step - 1, globalBatch: B, rows: rows)
            if !text.streamRestarts(step: step - 1, globalBatch: B) { copyStreamRows(rows); carried = true }
        } else {
            dataset.fillTrainingBatch(&stepBatch, step: step - 1, globalBatch: B, rows: rows)
        }
        let batch = stepBatch
        var t0 = 0
        while t0 < T {
            let t1 = min(t0 + k, T)
            let last = t1 == T
            net.collectDiagnostics = diagnostics && last
            // The exchange hooks act on the pass after which the gradients are final (not when a
            // test injects a NaN into them afterwards: the buffer must not change under a running
            // reduction).
            exchangeArmed = exchange != nil && last && lastOfStep && nanFaultStep != step
            let chunk = k == T ? batch : batch.timeSlice(t0..<t1, everyStep: true, inputWidth: net.spec.input.width, outputWidth: net.spec.outputSize)
            if carried {
                stats += chunkState.withUnsafeBufferPointer { net.lossAndGradient(chunk, initialState: $0.baseAddress) }
            } else {
                stats += net.lossAndGradient(chunk)  // the model's own initial state
            }
            if !last || streams != nil {
                chunkState.withUnsafeMutableBufferPointer { net.finalState(into: $0.baseAddress!) }
                carried = true
            }
            if diagnostics && last { sums = net.diagnosticSums() }
            t0 = t1
        }
        if streams != nil { setNextStreamRows(rows) }
        return (stats, sums)
    }

    // MARK: stateful streams

    /// The carried state of every stream (L, C, B, H), identical on every rank; and the next
    /// step's, to which each rank writes its rows (zeros elsewhere) before an allreduce.
    var streamState: [Float] = []
    var nextStreamState: [Float] = []

    /// Copies the (L, C, rows, H) slice of the carried state into chunkState.
    func copyStreamRows(_ rows: Range<Int>) {
        let H = network.spec.hiddenSize, B = config.training.globalBatchSize, planes = network.stateCount / H
        for p in 0..<planes {
            for (i, b) in rows.enumerated() {
                for j in 0..<H { chunkState[(p * rows.count + i) * H + j] = streamState[(p * B + b) * H + j] }
            }
        }
    }

    /// Writes the (L, C, rows, H) final state in chunkState into the next step's state. Adding 0
    /// turns -0.0 into +0.0, so the allreduce of single contributions and zeros is exact on any
    /// number of ranks.
    func setNextStreamRows(_ rows: Range<Int>) {
        let H = network.spec.hiddenSize, B = config.training.globalBatchSize, planes = network.stateCount / H
        for p in 0..<planes {
            for (i, b) in rows.enumerated() {
                for j in 0..<H { nextStreamState[(p * B + b) * H + j] = chunkState[(p * rows.count + i) * H + j] + 0 }
            }
        }
    }

    /// After a step's passes: every rank's rows of the next state, summed (each element has one
    /// contributor), so every rank holds every stream's state. It becomes the carried state only
    /// when the step's update is accepted (`acceptStreamState`).
    func exchangeStreamState() throws {
        try nextStreamState.withUnsafeMutableBufferPointer { try comm.allreduceSum($0) }
    }

    func acceptStreamState() {
        swap(&streamState, &nextStreamState)
        for i in nextStreamState.indices { nextStreamState[i] = 0 }
    }

    /// training.reproducible: the global batch in M fixed micro-shards (micro-shard j holds global
    /// rows [j*B/M, (j+1)*B/M)); this rank computes micro-shards [r*M/N, (r+1)*M/N), each on its
    /// own with fixed shapes, and everything that feeds the update is summed exactly over all
    /// micro-shards in 64-bit fixed point: the gradient (left in the gradient buffer), the loss
    /// sums, the diagnostics, and batch norm's (per micro-shard) statistics, which move the running
    /// statistics once. The result's bits do not depend on N. Returns the global loss sums (loss,
    /// terms, correct) and diagnostic sums.
    func reproducibleGradients(step: Int, diagnostics: Bool, injectNaN: Bool, hang: Bool) throws -> (loss: [Double], diagnostics: [Double]?) {
        let net = network!, M = config.training.microShards!, B = config.training.globalBatchSize
        let mine = Shard.rows(globalBatch: M, rank: comm.rank, size: comm.size)
        var lossParts: [[Double]] = [], diagnosticParts: [[Double]] = [], statisticParts: [[Double]] = []
        try fixedPointReduction!.reduceMicroShards(mine.count, gradients: net.gradients.pointer, totalParts: M) { n in
            net.gradients.zero()
            if net.spec.batchNorm { net.deferredStatistics = net.emptyDeferredStatistics() }
            let (stats, sums) = gradientOfRows(step: step, rows: Shard.rows(globalBatch: B, rank: mine.lowerBound + n, size: M),
                                               diagnostics: diagnostics, lastOfStep: false)
            if injectNaN && n == 0 { net.gradients[0] = .nan }
            if hang && n == mine.count - 1 { while true { sleep(60) } }
            lossParts.append([stats.sum, Double(stats.count), Double(stats.correct)])
            if let sums { diagnosticParts.append(sums) }
            if let d = net.deferredStatistics { statisticParts.append(d) }
        }
        net.deferredStatistics = nil
        let loss = try FixedPoint.sum(lossParts, count: 3, totalParts: M, comm: comm)
        var diagnosticTotals: [Double]?
        if diagnostics {
            diagnosticTotals = try FixedPoint.sum(diagnosticParts, count: net.diagnosticSumCount(steps: lastChunkLength), totalParts: M, comm: comm)
        }
        if net.spec.batchNorm {
            net.updateRunningStatistics(try FixedPoint.sum(statisticParts, count: net.runningStatistics.count + 1, totalParts: M, comm: comm))
        }
        return (loss, diagnosticTotals)
    }

    /// Local SGD: the mean of every rank's parameters, when they have moved apart since the last
    /// averaging (a decision every rank makes alike: it depends on the step count only). The
    /// optimizer state stays each rank's own (as in PyTorch's PostLocalSGDOptimizer).
    func averageParameters() throws {
        guard replicasApart else { return }
        let t0 = monotonicSeconds()
        try comm.allreduceMean(network.parameters.buffer)
        replicasApart = false
        let t = monotonicSeconds() - t0
        timing.communication += t
        timing.exposed += t
    }

    /// One allreduce(max) of the stop signal received on any rank; if there is one, every rank
    /// stops here together (after rank 0's checkpoint). Called exactly once per step on every path.
    func stopIfSignalled(step: Int) throws {
        var signal = [Double(Signals.received)]
        try comm.allreduceMax(&signal)
        if signal[0] > 0 { try stopForSignal(Int32(signal[0]), step: step) }
    }

    /// Every rank agreed that a stop signal arrived: checkpoint, then end with the resume code.
    func stopForSignal(_ signal: Int32, step: Int) throws -> Never {
        let path = try saveCheckpoint(step: step)
        throw ResumableStop(message: "\(Signals.name(signal)) received: checkpoint written at step \(step) to \(path); continue with: rnn-dp train --resume \(config.checkpoint.directory)")
    }

    /// Names of the gradient tensors holding a NaN or an infinity.
    func nonFiniteTensors() -> [String] {
        let g = network.gradients
        let bad = network.layout.views.filter { !Float.allFinite(g.pointer + $0.offset, $0.count) }.map(\.name)
        return bad.isEmpty ? ["the loss only"] : bad
    }

    /// One line: per layer the vanishing/exploding ratio and the saturation or dead-unit fraction.
    func describe(_ d: Diagnostics) -> String {
        let layers = (0..<d.dhNorms.count).map { k -> String in
            var s = String(format: "L%d |dL/dh_0|/|dL/dh_T-1| %.3g", k, d.dhRatio[k])
            if let sat = d.saturated[k] { s += String(format: ", saturated %.1f%%", sat * 100) }
            if let nd = d.nearDead[k] { s += String(format: ", near-dead %.1f%%", nd * 100) }
            if let dead = d.deadUnits[k] { s += String(format: ", dead units %.1f%%", dead * 100) }
            return s
        }
        return "diagnostics: " + layers.joined(separator: "; ")
    }

    /// Compares a checksum of the parameters across ranks; a mismatch stops every rank. Once the
    /// replicas are known to be identical, a non-finite parameter is a decision every rank makes alike.
    func verifyReplicas(step: Int) throws {
        try averageParameters()
        let sums = try comm.allgather(network.parameters.checksum())
        let differ = sums.indices.filter { sums[$0] != sums[0] }
        guard differ.isEmpty else {
            throw RNNDPError("replicas diverged at step \(step): parameters of rank\(differ.count > 1 ? "s" : "") \(differ.map(String.init).joined(separator: ", ")) differ from rank 0's (checksums \(differ.map { String(sums[$0], radix: 16) }.joined(separator: ", ")) vs \(String(sums[0], radix: 16)))",
                             exitCode: RNNDPError.replicasDiverged, collective: true)
        }
        guard Float.allFinite(network.parameters.pointer, network.parameters.count) else {
            throw RNNDPError("step \(step): the parameters are no longer finite; lower training.optimizer.learning_rate or set training.clip_norm",
                             exitCode: RNNDPError.runtimeFailure, collective: true)
        }
    }

    /// Mean validation loss over the fixed validation samples, sharded across ranks.
    func evaluate() throws -> Double? {
        try averageParameters()
        let e = try evaluateValidation(network: network, dataset: dataset, comm: comm, std: (dataset as? SeriesDataset)?.std ?? 1)
        validationAccuracy = e?.accuracy
        return e?.loss
    }

    func describeValidation(_ v: Double) -> String {
        switch dataset {
        case is TextDataset:
            return String(format: "validation: loss %.4f nats/char, perplexity %.3f, %.4f bits/char", v, exp(v), v / log(2))
        case let s as SeriesDataset:
            return String(format: "validation: MSE %.5f (normalized), RMSE %.5g in original units", v, v.squareRoot() * s.std)
        case is AddingProblem:
            return String(format: "validation: MSE %.5f (baseline 0.167 for the adding problem)", v)
        default:
            if let acc = validationAccuracy { return String(format: "validation: loss %.4f, accuracy %.2f%%", v, acc * 100) }
            return String(format: "validation: MSE %.5f", v)
        }
    }

    /// Metadata stored with the weights: enough to rebuild the model and its data encoding.
    func metadata(step: Int) -> [String: String] {
        var m: [String: String] = [
            "format": Checkpoint.format,
            "kind": "model",
            "step": String(step),
            "config": config.resolvedText,
            "layout": network.layout.views.map(\.name).joined(separator: ","),
        ]
        if let text = dataset as? TextDataset {
            m["vocabulary"] = (try? String(decoding: JSONSerialization.data(withJSONObject: text.vocabulary.characters.map { String($0) }), as: UTF8.self)) ?? ""
        }
        if let s = dataset as? SeriesDataset {
            m["normalization_mean"] = String(s.mean)
            m["normalization_std"] = String(s.std)
        }
        return m
    }

    func writeModel(path: String, step: Int) throws {
        try Checkpoint.write(path: path, tensors: modelTensors(network), metadata: metadata(step: step))
    }

    // MARK: checkpoints

    /// Everything a resumed run needs: parameters, running statistics, optimizer state.
    func checkpointTensors() -> [SafeTensors.Tensor] {
        var tensors = modelTensors(network)
        if streams != nil {
            let spec = network.spec
            tensors.append(SafeTensors.Tensor(name: "stream.state", shape: [spec.layers, spec.cell.stateTensors, config.training.globalBatchSize, spec.hiddenSize], values: streamState))
        }
        for (state, buffer) in optimizer.state {
            for v in network.layout.views {
                tensors.append(SafeTensors.Tensor(name: "optimizer.\(state).\(v.name)", shape: v.shape, values: Array(buffer.buffer[v.range])))
            }
        }
        return tensors
    }

    func checkpointMetadata(step: Int) -> [String: String] {
        var m = metadata(step: step)
        m["kind"] = "checkpoint"
        m["samples_seen"] = String(step * config.training.globalBatchSize)
        m["data_order"] = "sample order is a function of (seed \(config.seed), step, row); the next step is \(step + 1)"
        m["optimizer"] = config.training.optimizer.kind.rawValue
        m["optimizer_steps"] = String(optimizer.steps)
        m["schedule"] = "rate=\(schedule.plateauRate) best=\(schedule.best) bad=\(schedule.badEvaluations) cooldown=\(schedule.cooldownLeft)"
        m["skipped_steps"] = String(skippedSteps)
        m["skipped_in_a_row"] = String(skippedInARow)
        m["world_size"] = String(comm.size)
        return m
    }

    /// Rank 0 writes ckpt-<step> (atomically) and moves `latest`; returns its path on every rank.
    @discardableResult
    func saveCheckpoint(step: Int) throws -> String {
        try averageParameters()
        let dir = config.checkpoint.directory
        if comm.rank == 0 {
            let path = try Checkpoint.save(directory: dir, step: step, keep: config.checkpoint.keep,
                                           tensors: checkpointTensors(), metadata: checkpointMetadata(step: step))
            console.info("checkpoint: \(path)")
        }
        return "\(dir)/\(Checkpoint.fileName(step: step))"
    }

    /// Loads a checkpoint's parameters, running statistics, optimizer and schedule state; returns
    /// its step. Every tensor must match the model built from the config.
    func restore(from file: SafeTensors.File) throws -> Int {
        let path = resumePath ?? "checkpoint"
        guard file.metadata["kind"] == "checkpoint", let step = file.metadata["step"].flatMap(Int.init) else {
            throw RNNDPError("--resume: \(path): not a checkpoint (no kind=checkpoint and step in its metadata; model.init_from loads bare weights)")
        }
        let name = config.training.optimizer.kind.rawValue
        if let saved = file.metadata["optimizer"], saved != name {
            throw RNNDPError("--resume: \(path): was written with optimizer \(saved), the config says \(name)")
        }
        let net = network!
        let running = runningStatisticsTensors(net)
        let prefix = "--resume: \(path)"
        var expected = Set<String>()
        for v in net.layout.views {
            try copyTensor(file, v.name, shape: v.shape, into: net.parameters, at: v.offset, prefix: prefix)
            expected.insert(v.name)
        }
        for (i, r) in running.enumerated() {
            try copyTensor(file, r.name, shape: r.shape, into: net.runningStatistics, at: i * r.values.count, prefix: prefix)
            expected.insert(r.name)
        }
        for (state, buffer) in optimizer.state {
            for v in net.layout.views {
                try copyTensor(file, "optimizer.\(state).\(v.name)", shape: v.shape, into: buffer, at: v.offset, prefix: prefix)
                expected.insert("optimizer.\(state).\(v.name)")
            }
        }
        if streams != nil {
            let spec = net.spec, shape = [spec.layers, spec.cell.stateTensors, config.training.globalBatchSize, spec.hiddenSize]
            let state = Buffer<Float>(count: streamState.count)
            try copyTensor(file, "stream.state", shape: shape, into: state, at: 0, prefix: prefix + " (training.stateful)")
            streamState = state.array
            expected.insert("stream.state")
        }
        if let extra = file.tensors.first(where: { !expected.contains($0.name) }) {
            throw RNNDPError("--resume: \(path): tensor '\(SafeTensors.printable(extra.name))' does not belong to this model and optimizer")
        }
        optimizer.steps = Int(file.metadata["optimizer_steps"] ?? "") ?? step
        // Keys that decide which samples a step sees: a change breaks the continuation of the run.
        var stored: [String: String] = [:]
        for line in (file.metadata["config"] ?? "").split(separator: "\n") {
            if let colon = line.firstIndex(of: ":") { stored[String(line[..<colon])] = String(line[line.index(colon, offsetBy: 2)...]) }
        }
        let now = Dictionary(uniqueKeysWithValues: config.resolved.map { ($0.key, $0.value.description) })
        for key in ["seed", "training.global_batch_size", "training.sequence_length", "training.accumulate_steps", "training.bptt_length", "training.stateful", "data.path"] {
            if let a = stored[key], let b = now[key], a != b {
                console.warn("--resume: \(key) was \(a) in the checkpoint and is \(b) now: the run continues with a different data order or batch")
            }
        }
        if let sched = file.metadata["schedule"] {
            var fields: [String: Double] = [:]
            for part in sched.split(separator: " ") {
                let kv = part.split(separator: "=")
                if kv.count == 2, let v = Double(kv[1]) { fields[String(kv[0])] = v }
            }
            if let rate = fields["rate"], let best = fields["best"], let bad = fields["bad"], let cool = fields["cooldown"] {
                schedule.restore(rate: rate, best: best, badEvaluations: Int(bad), cooldownLeft: Int(cool))
            }
        }
        skippedSteps = Int(file.metadata["skipped_steps"] ?? "") ?? 0
        resumedSkippedInARow = Int(file.metadata["skipped_in_a_row"] ?? "") ?? 0
        return step
    }

    /// The parameters under their names, then batch norm's running statistics.
    func modelTensors(_ net: Network<Float>) -> [SafeTensors.Tensor] {
        let p = net.parameters
        var tensors = net.layout.views.map { v in
            SafeTensors.Tensor(name: v.name, shape: v.shape, values: Array(p.buffer[v.range]))
        }
        tensors += runningStatisticsTensors(net)
        return tensors
    }

    /// Text generated by the model one character at a time, carrying the hidden state.
    public func generate(_ vocab: Vocabulary, length: Int, temperature: Double) -> String {
        Generator.generate(network, vocab: vocab, prime: [vocab.token("\n") ?? 0], length: length, temperature: temperature, seed: config.seed)
    }

}
