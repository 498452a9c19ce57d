import Foundation
import XCTest
import RNNTrain

/// training.reproducible: the same bits on any number of ranks (docs/REPRODUCIBILITY.md).
final class ReproducibilityTests: XCTestCase {
    /// A small character model; `model` is YAML under `model:`, `training` extra keys under `training:`.
    func config(_ dir: String, model: String, training: String = "", steps: Int = 5) -> String {
        let path = "\(dir)/c.yaml"
        MPIRunner.write("""
        seed: 11
        data:
          kind: text
          path: \(MPIRunner.sharedData("tinyshakespeare.txt"))
          validation_fraction: 0.01
        model:
        \(model)
        training:
          global_batch_size: 13
          sequence_length: 10
          steps: \(steps)
          reproducible: true
          micro_shards: 8
          eval_every: 2
          eval_samples: 300
          check_every: 2
        \(training)
        output:
          directory: \(dir)/out
          log_every: 1
        """, to: path)
        return path
    }

    /// Every tensor of a model file (parameters and batch norm's running statistics) as bits.
    func bits(_ path: String) throws -> [String: [UInt32]] {
        let file = try SafeTensors.read(path: path)
        return Dictionary(uniqueKeysWithValues: file.tensors.map { ($0.name, $0.values.map(\.bitPattern)) })
    }

    /// The logged numbers of every metrics line: loss, gradient norm, validation loss and accuracy,
    /// and the diagnostics, as exact decimal text.
    func loggedValues(_ dir: String) throws -> [String] {
        let text = try String(contentsOfFile: "\(dir)/out/metrics.jsonl", encoding: .utf8)
        return try text.split(separator: "\n").map { line in
            let obj = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            return ["step", "loss", "grad_norm", "val_loss", "val_accuracy", "diagnostics"].map { key in
                obj[key].map { v in (try? String(decoding: JSONSerialization.data(withJSONObject: v, options: [.sortedKeys, .fragmentsAllowed]), as: UTF8.self)) ?? "\(v)" } ?? "-"
            }.joined(separator: " ")
        }
    }

    /// Trains `model` on each rank count and requires bit-identical models and logged values.
    func assertBitwiseAcrossRanks(_ name: String, model: String, training: String = "", ranks: [Int] = [1, 2, 3, 4, 8]) throws {
        var reference: (bits: [String: [UInt32]], log: [String])?
        for np in ranks {
            let dir = MPIRunner.tempDir()
            let r = try MPIRunner.run(np: np, ["train", "--config", config(dir, model: model, training: training)])
            XCTAssertEqual(r.status, 0, "\(name) np=\(np): \(r.stderr)")
            XCTAssertTrue(r.stdout.contains("exchange: reproducible, 8 fixed micro-shards"), r.stdout)
            let b = try bits("\(dir)/out/model.safetensors"), log = try loggedValues(dir)
            XCTAssertEqual(log.count, 5)
            if let ref = reference {
                XCTAssertEqual(b.keys.sorted(), ref.bits.keys.sorted())
                for (k, v) in b { XCTAssertEqual(v, ref.bits[k], "\(name): tensor \(k) differs between np=\(ranks[0]) and np=\(np)") }
                XCTAssertEqual(log, ref.log, "\(name): logged values differ between np=\(ranks[0]) and np=\(np)")
            } else {
                reference = (b, log)
            }
        }
    }

    /// An Elman RNN on 1, 2, 3 (uneven: 2, 3, 3 micro-shards), 4 and 8 (oversubscribed) ranks,
    /// reading the text as stateful streams (the carried state is exchanged exactly too).
    func testElmanRNNBitwiseOnOneToEightRanks() throws {
        try assertBitwiseAcrossRanks("rnn", model: "  cell: rnn\n  hidden_size: 20\n  layers: 2",
                                     training: "  optimizer: {name: sgd, learning_rate: 0.5, momentum: 0.9}\n  stateful: true")
    }

    /// An LSTM with gradient clipping (the clipping norm comes from the exactly summed gradient).
    func testLSTMWithClippingBitwiseOnOneToEightRanks() throws {
        try assertBitwiseAcrossRanks("lstm", model: "  cell: lstm\n  hidden_size: 16\n  layers: 2",
                                     training: "  optimizer: {name: adam, learning_rate: 0.02}\n  clip_norm: 0.25")
    }

    /// A GRU with batch norm: statistics per micro-shard, running statistics moved once per step
    /// from their exact sum, so they too are bitwise equal.
    func testGRUWithBatchNormBitwiseOnOneToEightRanks() throws {
        try assertBitwiseAcrossRanks("gru+bn", model: "  cell: gru\n  hidden_size: 16\n  layers: 1\n  batch_norm: true",
                                     training: "  optimizer: {name: adamw, learning_rate: 0.01}\n  bptt_length: 5")
    }

    /// Dropout between the layers and on the head's input, with truncated BPTT: the masks are a
    /// function of (seed, step, global row, layer, time step, unit), so 1, 2 and 3 ranks draw the
    /// same ones and train the same bits.
    func testLSTMWithDropoutBitwiseOnOneToThreeRanks() throws {
        try assertBitwiseAcrossRanks("lstm+dropout", model: "  cell: lstm\n  hidden_size: 16\n  layers: 2\n  dropout: 0.3\n  head_dropout: 0.2",
                                     training: "  optimizer: {name: adam, learning_rate: 0.02}\n  bptt_length: 4", ranks: [1, 2, 3])
    }

    /// Bidirectional GRU layers with dropout, through an embedding: bitwise identical on 1, 2 and 3 ranks.
    func testBidirectionalGRUWithDropoutBitwiseOnOneToThreeRanks() throws {
        try assertBitwiseAcrossRanks("bigru+dropout", model: "  cell: gru\n  hidden_size: 12\n  layers: 2\n  bidirectional: true\n  embedding_size: 8\n  dropout: 0.3",
                                     training: "  optimizer: {name: adam, learning_rate: 0.02}", ranks: [1, 2, 3])
    }

    /// Three steps on 2 ranks, a checkpoint, then three more on 3 ranks: the same bits as six
    /// uninterrupted steps on 1 rank, and the same logged losses for the resumed steps.
    func testResumeOnADifferentRankCountStaysOnTheTrajectory() throws {
        let model = "  cell: lstm\n  hidden_size: 16\n  layers: 1", training = "  optimizer: {name: adam, learning_rate: 0.02}\n  clip_norm: 0.5"
        let whole = MPIRunner.tempDir()
        XCTAssertEqual(try MPIRunner.run(np: 1, ["train", "--config", config(whole, model: model, training: training, steps: 6)]).status, 0)
        let split = MPIRunner.tempDir()
        let first = try MPIRunner.run(np: 2, ["train", "--config", config(split, model: model, training: training, steps: 3)])
        XCTAssertEqual(first.status, 0, first.stderr)
        let second = try MPIRunner.run(np: 3, ["train", "--config", config(split, model: model, training: training, steps: 6),
                                               "--resume", "\(split)/out/checkpoints"])
        XCTAssertEqual(second.status, 0, second.stderr)
        XCTAssertTrue(second.stdout.contains("at step 3"), second.stdout)
        XCTAssertEqual(try bits("\(split)/out/model.safetensors"), try bits("\(whole)/out/model.safetensors"))
        let a = try loggedValues(whole), b = try loggedValues(split)
        XCTAssertEqual(b.count, 6, "the first run logs steps 1-3, the second 4-6")
        XCTAssertEqual(Array(b.suffix(3)), Array(a.suffix(3)))
    }

    /// Fewer micro-shards than ranks, and settings that cannot be exact, are clear errors.
    func testReproducibleModeErrors() throws {
        let dir = MPIRunner.tempDir()
        let c = config(dir, model: "  cell: rnn\n  hidden_size: 8")
        let few = try MPIRunner.run(np: 3, ["train", "--config", c, "--set", "training.micro_shards=2"])
        XCTAssertEqual(few.status, 2, few.stderr)
        XCTAssertTrue(few.stderr.contains("training.micro_shards 2 is fewer than the 3 ranks"), few.stderr)
        XCTAssertEqual(few.stderr.components(separatedBy: "rnn-dp: error").count, 2, "one message: \(few.stderr)")
        let acc = try MPIRunner.run(np: 0, ["train", "--config", c, "--set", "training.accumulate_steps=2"])
        XCTAssertEqual(acc.status, 2)
        XCTAssertTrue(acc.stderr.contains("training.accumulate_steps: cannot be combined with training.reproducible"), acc.stderr)
        let big = try MPIRunner.run(np: 0, ["train", "--config", c, "--set", "training.micro_shards=14"])
        XCTAssertEqual(big.status, 2)
        XCTAssertTrue(big.stderr.contains("training.micro_shards: 14 micro-shards need at least as many samples, but training.global_batch_size is 13"), big.stderr)
        let half = try MPIRunner.run(np: 0, ["train", "--config", c, "--set", "training.compression=bf16"])
        XCTAssertEqual(half.status, 2)
        XCTAssertTrue(half.stderr.contains("training.compression: cannot be combined with training.reproducible"), half.stderr)
    }
}
