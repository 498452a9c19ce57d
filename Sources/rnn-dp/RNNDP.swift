import ArgumentParser
import Foundation
import RNNTrain
import RNNDistributed
import RNN
import RNNData

@main
struct RNNDP: ParsableCommand {
    /// ArgumentParser's own entry point, except that a usage error exits 2 (the README's code for
    /// bad input) instead of EX_USAGE (64).
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            let code = exitCode(for: error)
            if code == .validationFailure {
                FileHandle.standardError.write(Data((fullMessage(for: error) + "\n").utf8))
                Foundation.exit(RNNDPError.badInput)
            }
            exit(withError: error)
        }
    }

    static let configuration = CommandConfiguration(
        commandName: "rnn-dp",
        abstract: "Data-parallel training of recurrent neural networks on MPI.",
        discussion: """
        Run under an MPI launcher for several ranks (mpirun -np 4 rnn-dp train --config F), or \
        alone for one. Exit codes: 0 success, 2 bad input (usage, config, data, rank count), \
        1 runtime failure, 3 replicas diverged, 75 stopped by a signal after writing a checkpoint \
        (continue with --resume).
        """,
        subcommands: [Train.self, Sample.self, Eval.self, Inspect.self, Keys.self, BenchCommand.self, BenchAllreduce.self])
}

/// `--set key.path=value`, shared by the commands that read a config.
struct ConfigOverrides: ParsableArguments {
    @Option(name: .customLong("set"), help: ArgumentHelp("Override a config key, e.g. --set training.steps=50 or data.validation_fraction=0.2 (repeatable).", valueName: "key.path=value"))
    var overrides: [String] = []
}

/// `--checkpoint FILE`, shared by the commands that read a trained model.
struct ModelFileOption: ParsableArguments {
    @Option(help: ArgumentHelp("A model.safetensors or checkpoint written by rnn-dp train.", valueName: "file"))
    var checkpoint: String
}

extension Compression: ExpressibleByArgument {}

/// bench --scaling: the batch per rank fixed (weak) or the global batch fixed (strong).
enum Scaling: String, CaseIterable, ExpressibleByArgument {
    case weak, strong
}

/// Runs a command's body on every rank (Job.run) and exits with its code when it failed.
func runOnEveryRank(_ body: (Communicator, Console) throws -> Void) throws {
    let code = Job.run(body)
    if code != 0 { throw ExitCode(code) }
}

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train a model described by a YAML config.",
        discussion: "Prints progress on rank 0; writes metrics.jsonl and model.safetensors to output.directory.")

    @Option(name: .long, help: ArgumentHelp("The YAML config file (optional with --resume: the checkpoint holds its config).", valueName: "file"))
    var config: String?

    @OptionGroup var sets: ConfigOverrides
    var overrides: [String] { sets.overrides }

    @Option(name: .long, help: ArgumentHelp("Continue from a checkpoint file, or the latest one in a checkpoint directory or a run's output directory.", valueName: "dir-or-file"))
    var resume: String?

    @Flag(help: "Start a new run in an output.directory that holds another run's files, moving those files into its previous-TIME/ folder first (without it such a directory is refused).")
    var overwrite = false

    func validate() throws {
        if config == nil && resume == nil { throw ValidationError("give --config FILE, or --resume DIR_OR_FILE") }
        if overwrite && resume != nil { throw ValidationError("--overwrite starts a new run and --resume continues one: give one of them") }
    }

    func run() throws {
        Signals.install()
        try runOnEveryRank { comm, console in
            let (cfg, checkpoint) = try Job.collectively(comm) { () -> (TrainConfig, String?) in
                let checkpoint = try resume.map { path in
                    do { return try Checkpoint.resolve(path) } catch let e as Checkpoint.Error { throw RNNDPError("--resume: \(e.message)") }
                }
                if let config { return (try ConfigLoader.load(path: config, overrides: overrides), checkpoint) }
                return (try ConfigLoader.fromCheckpoint(path: checkpoint!, overrides: overrides), checkpoint)
            }
            try Trainer(config: cfg, comm: comm, console: console, resume: checkpoint, overwrite: overwrite).run()
        }
    }
}

struct Sample: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Generate text from a character model.")
    static let maxLength = 100_000_000

    @OptionGroup var model: ModelFileOption
    var checkpoint: String { model.checkpoint }
    @Option(help: "Text to feed the model before sampling (default: a newline).")
    var prime: String = ""
    @Option(parsing: .unconditional, help: "Characters to generate (at most 100000000).")
    var length: Int = 500
    @Option(parsing: .unconditional, help: "Softmax temperature (lower: more conservative).")
    var temperature: Double = 0.8
    @Option(parsing: .unconditional, help: "Seed of the sampling generator.")
    var seed: UInt64 = 1

    func validate() throws {
        guard length >= 0 else { throw ValidationError("--length must be >= 0") }
        guard length <= Sample.maxLength else { throw ValidationError("--length \(length) is more than \(Sample.maxLength) characters") }
        guard temperature > 0, temperature.isFinite else { throw ValidationError("--temperature must be > 0") }
    }

    func run() throws {
        try runOnEveryRank { comm, console in
            let model = try Job.collectively(comm) { try TrainedModel.load(path: checkpoint, loadData: false).0 }
            let text = try Job.collectively(comm) { try model.sample(prime: prime, length: length, temperature: temperature, seed: seed) }
            console.info(prime + text)
        }
    }
}

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Evaluate a trained model on the validation part of its data (sharded under mpirun).",
        discussion: "Text: loss, accuracy, perplexity, bits per character. Sequence classification: loss and accuracy. Series: MSE, and RMSE/MAE in the original units.")

    @OptionGroup var model: ModelFileOption
    var checkpoint: String { model.checkpoint }
    @Option(help: ArgumentHelp("Evaluate on this file instead of the training config's data.path.", valueName: "path"))
    var data: String?
    @OptionGroup var sets: ConfigOverrides
    var overrides: [String] { sets.overrides }
    @Flag(name: .customLong("skip-unknown"), help: "Evaluate a text without its characters that are not in the model's vocabulary (without it, such a text is refused).")
    var skipUnknown = false

    func run() throws {
        try runOnEveryRank { comm, console in
            let sets = overrides + (data.map { ["data.path=\($0)"] } ?? [])
            let (model, dataset) = try Job.collectively(comm) { () -> (TrainedModel, Dataset?) in
                let (model, dataset) = try TrainedModel.load(path: checkpoint, overrides: sets)
                if let text = dataset as? TextDataset, text.droppedValidationCharacters > 0, !skipUnknown {
                    let total = text.droppedValidationCharacters + text.validation.count
                    let examples = text.droppedExamples.map { "'\($0.escaped(asASCII: true))'" }.joined(separator: ", ")
                    throw RNNDPError("\(data ?? model.config.data.path ?? checkpoint): \(text.droppedValidationCharacters) of the \(total) characters evaluated "
                                     + String(format: "(%.1f%%)", 100 * Double(text.droppedValidationCharacters) / Double(max(total, 1)))
                                     + " are not in the model's vocabulary of \(text.vocabulary.count) (e.g. \(examples)): pass --skip-unknown to evaluate without them")
                }
                return (model, dataset)
            }
            if let text = dataset as? TextDataset, text.droppedValidationCharacters > 0 {
                console.warn("--skip-unknown: \(text.droppedValidationCharacters) characters outside the model's vocabulary were left out")
            }
            let result = try model.evaluate(dataset!, comm: comm)
            console.info("model: \(checkpoint) (step \(model.step))")
            console.info("data: \(dataset!.summary)")
            for line in result.lines { console.info(line) }
        }
    }
}

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show a model or checkpoint file: metadata, tensors, checksum status.")

    @Argument(help: ArgumentHelp("The safetensors file.", valueName: "file"))
    var file: String

    func run() throws {
        do {
            let report = try Inspector.describe(path: file)
            for line in report.lines { print(line) }
            if report.checksumMismatch {
                FileHandle.standardError.write(Data("rnn-dp: error: \(file): checksum mismatch: the file is corrupt\n".utf8))
                throw ExitCode(RNNDPError.badInput)
            }
        } catch let e as RNNDPError {
            FileHandle.standardError.write(Data("rnn-dp: error: \(e.message)\n".utf8))
            throw ExitCode(e.exitCode)
        }
    }
}

struct Keys: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List every config key with its values, default and meaning.")

    @Flag(help: "Print the markdown table of docs/CONFIG.md.")
    var markdown = false

    func run() throws {
        if markdown { print(ConfigReference.markdown, terminator: "") } else { for line in ConfigReference.plain { print(line) } }
    }
}

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Time the standard configurations (char model, V=65, cross-entropy at every step, Adam).",
        discussion: "Under mpirun: weak scaling (batch per rank fixed, the default) or strong scaling (global batch fixed). Prints median step time, tokens/s, GFLOP/s, the fraction of this machine's single-thread sgemm rate, and exposed communication.")

    @Option(name: .customLong("case"), help: "Run only these cases (repeatable): rnn-h128, lstm-h256x2, gru-h512, lstm-h1024, and (only when named) lstm-h512x4.")
    var cases: [String] = []
    @Option(help: "Timed steps per case.")
    var steps: Int = 20
    @Option(help: "Untimed warm-up steps per case.")
    var warmup: Int = 3
    @Option(help: "weak or strong.")
    var scaling: Scaling = .weak
    @Option(help: "BLAS threads per rank (default 1, the issue's setting).")
    var threads: Int = 1
    @Option(name: .customLong("bucket-mb"), help: "Gradient bucket size in MiB (0: one blocking allreduce after the backward pass).")
    var bucketMB: Double = 4
    @Flag(help: "Reproducible mode (training.reproducible): micro-shards computed on their own and summed exactly in 64-bit fixed point.")
    var reproducible = false
    @Option(name: .customLong("micro-shards"), help: "Reproducible mode: micro-shards of the global batch (default: one per rank).")
    var microShards: Int?
    @Option(name: .customLong("local-sgd"), help: "Local SGD: no gradient exchange, parameters averaged every this many steps (step times are then means, not medians).")
    var localSGD: Int?
    @Option(help: "Exchange the gradient as bf16 or fp16 (training.compression; in the buckets, or one blocking allreduce with --bucket-mb 0).")
    var compression: Compression = .none
    @Option(help: "The batch of every case instead of its own (global for strong scaling, per replica for weak).")
    var batch: Int?
    @Option(help: "Pipeline stages S (parallel.pipeline_stages): N = D x S ranks, D replicas of an S-stage pipeline.")
    var pipeline: Int = 1
    @Option(name: .customLong("chunk-steps"), help: "Time steps per chunk of the sweeps (parallel.chunk_steps; 0: the whole sequence).")
    var chunkSteps: Int = 0
    @Flag(help: "One JSON object per case.")
    var json = false

    func validate() throws {
        if let b = batch, b < 1 { throw ValidationError("--batch >= 1") }
        guard pipeline >= 1, chunkSteps >= 0 else { throw ValidationError("--pipeline >= 1, --chunk-steps >= 0") }
        if pipeline > 1 && localSGD != nil { throw ValidationError("--pipeline cannot be combined with --local-sgd") }
        if compression != .none && (reproducible || localSGD != nil) { throw ValidationError("--compression cannot be combined with --reproducible or --local-sgd") }
        if let k = localSGD, k < 1 || reproducible { throw ValidationError("--local-sgd needs k >= 1 and cannot be combined with --reproducible") }
        if microShards != nil && !reproducible { throw ValidationError("--micro-shards needs --reproducible") }
        guard steps >= 1, warmup >= 0, threads >= 1, bucketMB >= 0 else { throw ValidationError("--steps >= 1, --warmup >= 0, --threads >= 1, --bucket-mb >= 0") }
        for c in cases where !Bench.all.contains(where: { $0.name == c }) {
            throw ValidationError("unknown case '\(c)' (known: \(Bench.all.map(\.name).joined(separator: ", ")))")
        }
    }

    func run() throws {
        try runOnEveryRank { comm, console in
            setBLASThreads(threads)
            let products = try Trainer.recurrentProducts()
            let sgemm = Bench.sgemmRate()
            var rate = [sgemm]
            try comm.allreduceMax(&rate)
            if !json {
                console.info("rnn-dp bench: \(comm.name), \(threads) BLAS thread\(threads == 1 ? "" : "s") per rank, \(scaling.rawValue) scaling, \(steps) steps after \(warmup) warm-up"
                             + (reproducible ? ", reproducible mode with \(microShards ?? comm.size / pipeline) micro-shards" : "")
                             + (pipeline > 1 ? ", \(pipeline)-stage pipeline x \(comm.size / pipeline) replica\(comm.size / pipeline == 1 ? "" : "s")" : "")
                             + (chunkSteps > 0 ? ", chunks of \(chunkSteps) steps" : ""))
                console.info(String(format: "single-thread sgemm (1024^3): %.1f GFLOP/s", rate[0]))
                console.info(RecurrentProducts.summary(products))
                console.info("case          ranks  batch  step ms  tokens/s   GFLOP/s  of sgemm  compute ms  exposed comm ms  memory MB (model / peak growth)")
            }
            for named in Bench.all where cases.isEmpty ? Bench.standard.contains(where: { $0.name == named.name }) : cases.contains(named.name) {
                let c = batch.map { Bench.Case(name: named.name, cell: named.cell, hidden: named.hidden, layers: named.layers, steps: named.steps, batch: $0) } ?? named
                let r = try Bench.run(c, comm: comm, strong: scaling == .strong, warmup: warmup, steps: steps, sgemm: rate[0],
                                      bucketBytes: Int(bucketMB * 1_048_576), microShards: reproducible ? (microShards ?? comm.size / pipeline) : nil,
                                      localSGD: localSGD, compression: compression, stages: pipeline, chunkSteps: chunkSteps)
                if json {
                    console.info(try BenchRecord(r, bucketMB: bucketMB, reproducible: reproducible, localSGD: localSGD ?? 0,
                                                 sgemm: rate[0], threads: threads, scaling: scaling.rawValue,
                                                 products: RecurrentProducts.name(products)).json())
                } else {
                    let name = r.name.padding(toLength: 12, withPad: " ", startingAt: 0)
                    console.info(name + String(format: " %6d %6d %8.2f %9.0f %9.1f %8.0f%% %11.2f %16.3f %9.1f / %.1f", r.ranks, r.globalBatch,
                                        r.medianStep * 1000, r.tokensPerSecond, r.gflops, r.fractionOfSgemm * 100, r.medianCompute * 1000, r.medianExposedComm * 1000,
                                        Double(r.modelBytes) / 1e6, Double(r.peakGrowthBytes) / 1e6))
                    console.info(String(format: "  per rank and step: %.2f MB in %d point-to-point messages, %.2f MB allreduced in %d collectives",
                                        Double(r.p2pBytes) / 1e6, r.p2pMessages, Double(4 * r.allreducedElements) / 1e6, r.collectives)
                                 + (r.stages > 1 ? String(format: "; %d stages, %d chunks: stages idle %.1f%% of the step (measured), %.1f%% modelled for this split; bubble (S-1)/(C+S-1) %.1f%%",
                                                          r.stages, r.chunks, 100 * r.bubble, 100 * r.modelIdle, 100 * r.modelBubble) : ""))
                }
            }
        }
    }
}

struct BenchAllreduce: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-allreduce",
        abstract: "Measure MPI_Allreduce latency and bandwidth over message sizes and fit the alpha-beta model of a ring allreduce.",
        discussion: "Run under mpirun with 2 or more ranks: mpirun -np 2 rnn-dp bench-allreduce")

    @Option(help: "Repetitions per size (median reported).")
    var repeats: Int = 20
    @Option(name: .customLong("max-mb"), help: "Largest message in MiB.")
    var maxMB: Int = 64
    @Flag(help: "One JSON object per size, then one for the fit.")
    var json = false

    func validate() throws {
        guard repeats >= 1, maxMB >= 1 else { throw ValidationError("--repeats >= 1, --max-mb >= 1") }
    }

    func run() throws {
        try runOnEveryRank { comm, console in
            guard comm.size > 1 else { throw RNNDPError("bench-allreduce needs at least 2 ranks: mpirun -np 2 rnn-dp bench-allreduce", collective: true) }
            var sizes: [Int] = []
            var b = 4
            while b <= maxMB << 20 { sizes.append(b); b *= 4 }
            let points = try Bench.allreduceTimes(comm: comm, sizes: sizes, repeats: repeats)
            if !json { console.info("MPI_Allreduce (float sum, in place) on \(comm.size) ranks, median of \(repeats)") ; console.info("bytes        time us   GB/s (algorithm bandwidth)") }
            for (bytes, t) in points {
                if json {
                    console.info("{\"bytes\":\(bytes),\"seconds\":\(t),\"ranks\":\(comm.size)}")
                } else {
                    console.info(String(format: "%-12d %9.1f %7.2f", bytes, t * 1e6, Double(bytes) / t / 1e9))
                }
            }
            if let m = AllreduceModel.fit(points.map { (Double($0.bytes), $0.seconds) }, ranks: comm.size) {
                if json { console.info("{\"alpha\":\(m.alpha),\"beta\":\(m.beta),\"ranks\":\(comm.size)}") }
                else { console.info(String(format: "fit: alpha = %.2f us per message, beta = %.3f ns per byte (%.2f GB/s)", m.alpha * 1e6, m.beta * 1e9, 1 / m.beta / 1e9)) }
            }
        }
    }
}

/// One line of `rnn-dp bench --json` (keys in snake case: step_s, tokens_per_s, ...).
struct BenchRecord: Encodable {
    var `case`: String, ranks: Int, globalBatch: Int
    var stepS: Double, tokensPerS: Double, gflops: Double, fractionOfSgemm: Double
    var computeS: Double, exposedCommS: Double, commS: Double
    var bytesPerStep: Int, allreduceGbps: Double, parameters: Int
    var bucketMb: Double, reproducible: Bool, localSgd: Int, compression: String
    var modelBytes: Int, peakGrowthBytes: Int, microShards: Int
    var sgemmGflops: Double, threads: Int, scaling: String, products: String
    var stages: Int, chunks: Int, p2pBytes: Int, p2pMessages: Int, allreducedBytes: Int, collectives: Int
    var bubble: Double, modelBubble: Double, modelIdle: Double

    init(_ r: Bench.Result, bucketMB: Double, reproducible: Bool, localSGD: Int, sgemm: Double, threads: Int, scaling: String, products: String) {
        `case` = r.name; ranks = r.ranks; globalBatch = r.globalBatch
        stepS = r.medianStep; tokensPerS = r.tokensPerSecond; gflops = r.gflops; fractionOfSgemm = r.fractionOfSgemm
        computeS = r.medianCompute; exposedCommS = r.medianExposedComm; commS = r.medianCommunication
        bytesPerStep = r.bytesPerStep; allreduceGbps = r.allreduceGBps; parameters = r.parameters
        bucketMb = bucketMB; self.reproducible = reproducible; localSgd = localSGD; compression = r.compression.rawValue
        modelBytes = r.modelBytes; peakGrowthBytes = r.peakGrowthBytes; microShards = r.microShards ?? 0
        sgemmGflops = sgemm; self.threads = threads; self.scaling = scaling; self.products = products
        stages = r.stages; chunks = r.chunks; p2pBytes = r.p2pBytes; p2pMessages = r.p2pMessages
        allreducedBytes = 4 * r.allreducedElements; collectives = r.collectives; bubble = r.bubble; modelBubble = r.modelBubble; modelIdle = r.modelIdle
    }

    func json() throws -> String {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = .sortedKeys
        return String(decoding: try encoder.encode(self), as: UTF8.self)
    }
}
