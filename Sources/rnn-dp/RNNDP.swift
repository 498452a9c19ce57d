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
        subcommands: [Train.self])
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
