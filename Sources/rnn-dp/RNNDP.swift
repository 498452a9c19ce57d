import ArgumentParser
import Foundation
import RNNTrain

@main
struct RNNDP: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rnn-dp",
        abstract: "Data-parallel training of recurrent neural networks on MPI.",
        discussion: """
        Run under an MPI launcher for several ranks (mpirun -np 4 rnn-dp train --config F), or \
        alone for one. Exit codes: 0 success, 2 bad input (usage, config, data, rank count), \
        1 runtime failure, 3 replicas diverged, 75 stopped by a signal after writing a checkpoint \
        (continue with --resume).
        """,
        subcommands: [Train.self, Sample.self, Eval.self, Inspect.self, Keys.self])
}

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train a model described by a YAML config.",
        discussion: "Prints progress on rank 0; writes metrics.jsonl and model.safetensors to output.directory.")

    @Option(name: .long, help: ArgumentHelp("The YAML config file (optional with --resume: the checkpoint holds its config).", valueName: "file"))
    var config: String?

    @Option(name: .customLong("set"), help: ArgumentHelp("Override a config key, e.g. --set training.steps=50 (repeatable).", valueName: "key.path=value"))
    var overrides: [String] = []

    @Option(name: .long, help: ArgumentHelp("Continue from a checkpoint file, or the latest one in a checkpoint directory.", valueName: "dir-or-file"))
    var resume: String?

    func validate() throws {
        if config == nil && resume == nil { throw ValidationError("give --config FILE, or --resume DIR_OR_FILE") }
    }

    func run() throws {
        Signals.install()
        let code = Job.run { comm, console in
            let (cfg, checkpoint) = try Job.collectively(comm) { () -> (TrainConfig, String?) in
                let checkpoint = try resume.map { path in
                    do { return try Checkpoint.resolve(path) } catch let e as Checkpoint.Error { throw RNNDPError("--resume: \(e.message)") }
                }
                if let config { return (try ConfigLoader.load(path: config, overrides: overrides), checkpoint) }
                return (try ConfigLoader.fromCheckpoint(path: checkpoint!, overrides: overrides), checkpoint)
            }
            try Trainer(config: cfg, comm: comm, console: console, resume: checkpoint).run()
        }
        if code != 0 { throw ExitCode(code) }
    }
}

struct Sample: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Generate text from a character model.")

    @Option(help: ArgumentHelp("A model.safetensors or checkpoint written by rnn-dp train.", valueName: "file"))
    var checkpoint: String
    @Option(help: "Text to feed the model before sampling (default: a newline).")
    var prime: String = ""
    @Option(help: "Characters to generate.")
    var length: Int = 500
    @Option(help: "Softmax temperature (lower: more conservative).")
    var temperature: Double = 0.8
    @Option(help: "Seed of the sampling generator.")
    var seed: UInt64 = 1

    func validate() throws {
        guard length >= 0 else { throw ValidationError("--length must be >= 0") }
        guard temperature > 0, temperature.isFinite else { throw ValidationError("--temperature must be > 0") }
    }

    func run() throws {
        let code = Job.run { comm, console in
            let model = try Job.collectively(comm) { try TrainedModel.load(path: checkpoint, loadData: false).0 }
            let text = try Job.collectively(comm) { try model.sample(prime: prime, length: length, temperature: temperature, seed: seed) }
            console.info(prime + text)
        }
        if code != 0 { throw ExitCode(code) }
    }
}

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Evaluate a trained model on the validation part of its data (sharded under mpirun).",
        discussion: "Text: loss, perplexity, bits per character, accuracy. Series: MSE, and RMSE/MAE in the original units.")

    @Option(help: ArgumentHelp("A model.safetensors or checkpoint written by rnn-dp train.", valueName: "file"))
    var checkpoint: String
    @Option(help: ArgumentHelp("Evaluate on this file instead of the training config's data.path.", valueName: "path"))
    var data: String?
    @Option(name: .customLong("set"), help: ArgumentHelp("Override a config key (e.g. data.validation_fraction=0.2).", valueName: "key.path=value"))
    var overrides: [String] = []

    func run() throws {
        let code = Job.run { comm, console in
            let sets = overrides + (data.map { ["data.path=\($0)"] } ?? [])
            let (model, dataset) = try Job.collectively(comm) { try TrainedModel.load(path: checkpoint, overrides: sets) }
            let result = try model.evaluate(dataset!, comm: comm)
            console.info("model: \(checkpoint) (step \(model.step))")
            console.info("data: \(dataset!.summary)")
            for line in result.lines { console.info(line) }
        }
        if code != 0 { throw ExitCode(code) }
    }
}

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show a model or checkpoint file: metadata, tensors, checksum status.")

    @Argument(help: ArgumentHelp("The safetensors file.", valueName: "file"))
    var file: String

    func run() throws {
        do {
            for line in try Inspector.describe(path: file) { print(line) }
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
