import Foundation
import XCTest
import RNN
import RNNData
import RNNTrain
import Margins

/// Sequences of different lengths across ranks (really launching `mpirun`): packed batches,
/// length-bucketed global batches dealt to the ranks by time steps, and the gradient divided by
/// the global number of valid terms, so any number of ranks trains the same model.
final class VariableLengthTests: XCTestCase {
    /// A config on JapaneseVowels (lengths 7 to 29) with a global batch of 7 (uneven shards).
    func vowels(_ dir: String, model: String, training: String = "", steps: Int = 6) -> String {
        let path = "\(dir)/c.yaml"
        MPIRunner.write("""
        seed: 4
        data:
          kind: ts
          path: \(MPIRunner.sharedData("JapaneseVowels_TRAIN.ts"))
          validation_path: \(MPIRunner.sharedData("JapaneseVowels_TEST.ts"))
        model:
        \(model)
        training:
          global_batch_size: 7
          steps: \(steps)
          threads: 1
          check_every: 3
          eval_every: 3
          eval_samples: 150
          # SGD: an update linear in the gradient, so rounding differences between rank counts stay
          # at their own size (Adam's scale-free step magnifies those of near-zero gradient elements).
          optimizer: {name: sgd, learning_rate: 0.1, momentum: 0.9}
        \(training)
        output:
          directory: \(dir)/out
          log_every: 3
        """, to: path)
        return path
    }

    /// npy inputs (N = 23, padded to T = 9, lengths 2 to 9 from a lengths file) with a loss at
    /// every step: MSE averaged over the valid terms of the global batch.
    func everyStepNumpy(_ dir: String) throws -> String {
        var rng = Xoshiro256(seed: 17)
        let N = 23, T = 9, I = 3
        let lengths = (0..<N).map { i in Int32(i == 0 ? T : 2 + rng.nextInt(below: T - 1)) }
        let x = (0..<(N * T * I)).map { _ in rng.nextUniform() * 2 - 1 }
        let y = (0..<(N * T)).map { _ in rng.nextUniform() * 2 - 1 }
        for (name, a) in [("x", NumpyArray(shape: [N, T, I], values: .float(x))), ("y", NumpyArray(shape: [N, T, 1], values: .float(y))),
                          ("l", NumpyArray(shape: [N], values: .int(lengths)))] {
            FileManager.default.createFile(atPath: "\(dir)/\(name).npy", contents: Data(a.encoded()))
        }
        let path = "\(dir)/c.yaml"
        MPIRunner.write("""
        seed: 8
        data:
          kind: npy
          inputs: \(dir)/x.npy
          targets: \(dir)/y.npy
          lengths: \(dir)/l.npy
          validation_fraction: 0.2
        model:
          cell: gru
          hidden_size: 10
          layers: 2
          bidirectional: true
          layer_norm: true
          dropout: 0.25
        training:
          global_batch_size: 7
          steps: 6
          threads: 1
          average_over_time: true
          optimizer: {name: sgd, learning_rate: 0.1, momentum: 0.9}
        output:
          directory: \(dir)/out
          log_every: 3
        """, to: path)
        return path
    }

    /// The model file of `config(dir)` trained at each of `ranks`, and rank 0's output.
    func train(_ ranks: [Int], _ config: (String) throws -> String, sets: [String] = []) throws -> [Int: (SafeTensors.File, String)] {
        var out: [Int: (SafeTensors.File, String)] = [:]
        for np in ranks {
            let dir = MPIRunner.tempDir()
            let r = try MPIRunner.run(np: np, ["train", "--config", try config(dir)] + sets)
            XCTAssertEqual(r.status, 0, "np=\(np): \(r.stderr)")
            out[np] = (try SafeTensors.read(path: "\(dir)/out/model.safetensors"), r.stdout)
        }
        return out
    }

    /// A 2-layer bidirectional LSTM with dropout between the layers and on the head (last_step:
    /// each sample's h_n at its own length), and the every_step npy model: np = 2 and 3 train
    /// what np = 1 trains, within 1e-5.
    func testSameModelOnOneTwoAndThreeRanks() throws {
        let lstm = try train([1, 2, 3], { self.vowels($0, model: "  cell: lstm\n  hidden_size: 12\n  layers: 2\n  bidirectional: true\n  dropout: 0.3\n  head_dropout: 0.2") })
        for np in [2, 3] { assertClose(lstm[np]!.0, lstm[1]!.0, 1e-5, "bidirectional LSTM, lengths 7-29, np=\(np) vs np=1", group: "VariableLength") }
        XCTAssertTrue(lstm[3]!.1.contains("rows dealt to 3 ranks"), lstm[3]!.1)
        XCTAssertTrue(lstm[3]!.1.contains("| padding "), "the log reports padding and imbalance: \(lstm[3]!.1)")
        let npy = try train([1, 2, 3], everyStepNumpy)
        for np in [2, 3] { assertClose(npy[np]!.0, npy[1]!.0, 1e-5, "every_step npy with lengths, np=\(np) vs np=1", group: "VariableLength") }
    }

    /// Reproducible mode: bitwise the same model and logged losses on 1, 2 and 3 ranks, with a
    /// bidirectional GRU, dropout and batch norm over valid rows.
    func testReproducibleBitwiseOnOneTwoAndThreeRanks() throws {
        var reference: (bits: [String: [UInt32]], log: [String])?
        for np in [1, 2, 3] {
            let dir = MPIRunner.tempDir()
            let path = vowels(dir, model: "  cell: gru\n  hidden_size: 10\n  layers: 2\n  bidirectional: true\n  dropout: 0.3\n  batch_norm: true",
                              training: "  reproducible: true\n  micro_shards: 6")
            let r = try MPIRunner.run(np: np, ["train", "--config", path])
            XCTAssertEqual(r.status, 0, "np=\(np): \(r.stderr)")
            XCTAssertTrue(r.stdout.contains("rows dealt to 6 micro-shards"), r.stdout)
            let file = try SafeTensors.read(path: "\(dir)/out/model.safetensors")
            let bits = Dictionary(uniqueKeysWithValues: file.tensors.map { ($0.name, $0.values.map(\.bitPattern)) })
            let log = try String(contentsOfFile: "\(dir)/out/metrics.jsonl", encoding: .utf8).split(separator: "\n").map { line -> String in
                let obj = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
                return ["loss", "grad_norm", "val_loss", "val_accuracy", "padding", "rank_imbalance"].map { "\(obj[$0] ?? "-")" }.joined(separator: " ")
            }
            XCTAssertEqual(log.count, 2)
            if let ref = reference {
                for (k, v) in bits { XCTAssertEqual(v, ref.bits[k], "tensor \(k) differs between np=1 and np=\(np)") }
                XCTAssertEqual(log, ref.log, "logged values differ between np=1 and np=\(np)")
            } else {
                reference = (bits, log)
            }
        }
    }

    /// Learning, CI-sized: configs/japanese-vowels.yaml (a bidirectional GRU) at np = 2 reaches
    /// at least 0.95 test accuracy (measured 0.968-0.987 over seeds 1-8 under the Cooperlake and
    /// Haswell kernels, docs/EXPERIMENTS.md).
    func testJapaneseVowelsLearnsAtTwoRanks() throws {
        let dir = MPIRunner.tempDir()
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let r = try MPIRunner.run(np: 2, ["train", "--config", root.appendingPathComponent("configs/japanese-vowels.yaml").path,
                                          "--set", "output.directory=\(dir)/out",
                                          "--set", "data.path=\(MPIRunner.sharedData("JapaneseVowels_TRAIN.ts"))",
                                          "--set", "data.validation_path=\(MPIRunner.sharedData("JapaneseVowels_TEST.ts"))"], timeout: 300)
        XCTAssertEqual(r.status, 0, r.stderr)
        let line = try XCTUnwrap(r.stdout.split(separator: "\n").last { $0.hasPrefix("validation:") }, r.stdout)
        let accuracy = try XCTUnwrap(Double(line.split(separator: " ").last!.dropLast()), String(line)) / 100
        Margin.report("VariableLength", "JapaneseVowels test accuracy", value: accuracy, must: .above, bound: 0.95)
        XCTAssertGreaterThanOrEqual(accuracy, 0.95, String(line))
        // `eval` of the model file at another rank count: the same accuracy, as a classifier (no perplexity).
        let e = try MPIRunner.run(np: 3, ["eval", "--checkpoint", "\(dir)/out/model.safetensors"])
        XCTAssertEqual(e.status, 0, e.stderr)
        XCTAssertTrue(e.stdout.contains(String(format: "accuracy: %.4f", accuracy)), e.stdout)
        XCTAssertFalse(e.stdout.contains("perplexity"), e.stdout)
    }

    /// Combinations that cannot work are one line on every rank: truncated BPTT needs one length.
    func testTruncatedBPTTWithUnequalLengthsIsAnError() throws {
        let dir = MPIRunner.tempDir()
        let path = try everyStepNumpy(dir)
        let r = try MPIRunner.run(np: 2, ["train", "--config", path, "--set", "model.bidirectional=false", "--set", "training.bptt_length=3"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("training.bptt_length: truncated BPTT needs sequences of one length"), r.stderr)
    }
}
