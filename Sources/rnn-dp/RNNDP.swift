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
        1 runtime failure, 3 replicas diverged.
        """,
        subcommands: [Train.self])
}

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train a model described by a YAML config.",
        discussion: "Prints progress on rank 0; writes metrics.jsonl and model.safetensors to output.directory.")

    @Option(name: .long, help: ArgumentHelp("The YAML config file.", valueName: "file"))
    var config: String

    @Option(name: .customLong("set"), help: ArgumentHelp("Override a config key, e.g. --set training.steps=50 (repeatable).", valueName: "key.path=value"))
    var overrides: [String] = []

    func run() throws {
        let code = Job.run { comm, console in
            let cfg = try Job.collectively(comm) { try ConfigLoader.load(path: config, overrides: overrides) }
            try Trainer(config: cfg, comm: comm, console: console).run()
        }
        if code != 0 { throw ExitCode(code) }
    }
}
