import Foundation
import XCTest
import RNN
import RNNDistributed
import RNNData
@testable import RNNTrain
import Margins

final class TrainerTests: XCTestCase {
    func outputDir() -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("rnn-dp-train-\(UUID().uuidString)").path
    }

    func train(_ yaml: String, _ sets: [String] = []) throws -> (TrainResult, Trainer) {
        let config = try ConfigLoader.parse(yaml: yaml, name: "test.yaml", overrides: sets + ["output.directory=\(outputDir())"])
        let comm = SingleProcessCommunicator()
        let trainer = Trainer(config: config, comm: comm, console: Console(rank: 1, size: 1))  // rank 1: quiet
        return (try trainer.run(), trainer)
    }

    /// The adding problem at length 10 is learned far below the 0.167 baseline.
    func testAddingProblemIsLearnedBelowTheBaseline() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let yaml = try String(contentsOfFile: root.appendingPathComponent("configs/adding.yaml").path, encoding: .utf8)
        let (result, _) = try train(yaml, ["training.threads=1"])
        let v = try XCTUnwrap(result.validationLoss)
        Margin.report("AddingProblem", "length-10 validation MSE", value: v, must: .below, bound: 0.05)
        XCTAssertLessThan(v, 0.05, "validation MSE \(v) vs baseline 0.167")
    }

    func testOutputsMetricsAndModelWithPyTorchNames() throws {
        let dir = outputDir()
        let config = try ConfigLoader.parse(yaml: "data: {kind: synthetic, length: 5}\nmodel: {hidden_size: 8, layers: 2}\ntraining: {steps: 12, global_batch_size: 4}\noutput: {log_every: 5}\n",
                                            name: "t.yaml", overrides: ["output.directory=\(dir)"])
        let trainer = Trainer(config: config, comm: SingleProcessCommunicator(), console: Console(rank: 1, size: 1))
        try trainer.run()
        let lines = try String(contentsOfFile: "\(dir)/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        let records = try lines.map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        XCTAssertEqual(records.compactMap { $0["loss"] as? Double }.count, 3)  // steps 5, 10, 12
        XCTAssertEqual(records.compactMap { $0["step"] as? Int }, [5, 10, 12])
        XCTAssertNil(records[0]["val_loss"] as? Double)
        XCTAssertNotNil(records.last?["val_loss"] as? Double)  // the final step carries the validation loss
        let model = try SafeTensors.read(path: "\(dir)/model.safetensors")
        XCTAssertEqual(model.tensors.map(\.name).sorted(), trainer.network.layout.views.map(\.name).sorted())
        XCTAssertEqual(model.tensor("rnn.weight_ih_l0")?.shape, [8, 2])
        XCTAssertEqual(model.tensor("head.weight")?.shape, [1, 8])
        for v in trainer.network.layout.views {
            XCTAssertEqual(model.tensor(v.name)?.values, Array(trainer.network.parameters.buffer[v.range]), v.name)
        }
        XCTAssertEqual(model.metadata["step"], "12")
        XCTAssertTrue(model.metadata["config"]?.contains("model.hidden_size: 8") ?? false)
    }

    func testTextRunGeneratesFromTheVocabulary() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("rnn-dp-text-\(UUID().uuidString).txt").path
        _ = FileManager.default.createFile(atPath: path, contents: Data(String(repeating: "abcabcabd\n", count: 200).utf8))
        let (result, trainer) = try train("data: {kind: text, path: \(path)}\nmodel: {hidden_size: 16}\ntraining: {steps: 30, sequence_length: 8, global_batch_size: 8, optimizer: {learning_rate: 0.5}}\n")
        Margin.report("TextRun", "final loss", value: result.finalLoss, must: .below, bound: 0.9)
        XCTAssertLessThan(result.finalLoss, 0.9)  // from ln 5 = 1.61; the text is nearly periodic
        let vocab = (trainer.dataset as! TextDataset).vocabulary
        let s = trainer.generate(vocab, length: 50, temperature: 0.8)
        XCTAssertEqual(s.unicodeScalars.count, 50)
        XCTAssertTrue(s.unicodeScalars.allSatisfy { "abcd\n".unicodeScalars.contains($0) })
    }

    static var root: URL { URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent() }

    /// The vanishing-gradient story in one test: on the adding problem at length 50 the tanh RNN
    /// stays at the 0.167 baseline while LSTM and GRU learn it (CI-sized: 1500 Adam steps, enough for
    /// every seed tried: at 1000, 2 of 6 LSTM seeds had not yet left the baseline;
    /// docs/EXPERIMENTS.md has the longer runs).
    func testGatedCellsLearnTheLongAddingProblemAndTheTanhRNNDoesNot() throws {
        let yaml = try String(contentsOfFile: Self.root.appendingPathComponent("configs/adding.yaml").path, encoding: .utf8)
        var results: [String: Double] = [:]
        for cell in ["rnn", "lstm", "gru"] {
            var sets = ["model.cell=\(cell)", "data.length=50", "training.optimizer.name=adam", "training.optimizer.learning_rate=0.01",
                        "training.steps=1500", "training.threads=1", "training.eval_samples=500"]
            if cell == "lstm" { sets.append("model.init.forget_bias=1") }
            results[cell] = try XCTUnwrap(train(yaml, sets).0.validationLoss)
        }
        Margin.report("LongAdding", "tanh RNN validation MSE", value: results["rnn"]!, must: .above, bound: 0.12)
        Margin.report("LongAdding", "LSTM validation MSE", value: results["lstm"]!, must: .below, bound: 0.03)
        Margin.report("LongAdding", "GRU validation MSE", value: results["gru"]!, must: .below, bound: 0.03)
        XCTAssertGreaterThan(results["rnn"]!, 0.12, "\(results)")
        XCTAssertLessThan(results["lstm"]!, 0.03, "\(results)")
        XCTAssertLessThan(results["gru"]!, 0.03, "\(results)")
    }

    /// Many-to-one classification of the BasicMotions activity recordings (6 channels, 100 steps,
    /// 40 test recordings). One seed's result is one draw from the recipe's spread, and a different
    /// BLAS kernel is a different draw; so three seeds are trained and each must clear 0.8 test
    /// accuracy, and their mean 0.9. Over 16 seeds and 4 kernels the recipe's worst was 0.875
    /// (docs/EXPERIMENTS.md).
    func testBasicMotionsClassification() throws {
        let yaml = try String(contentsOfFile: Self.root.appendingPathComponent("configs/basicmotions-lstm.yaml").path, encoding: .utf8)
            .replacingOccurrences(of: "../shared/data/", with: Self.root.deletingLastPathComponent().appendingPathComponent("shared/data").path + "/")
        var accuracies: [Double] = []
        for seed in [11, 12, 13] {
            let (result, trainer) = try train(yaml, ["training.threads=1", "seed=\(seed)"])
            let loss = try XCTUnwrap(result.validationLoss), accuracy = try XCTUnwrap(trainer.validationAccuracy)
            Margin.report("BasicMotions", "seed \(seed) validation loss", value: loss, must: .below, bound: 0.5)
            Margin.report("BasicMotions", "seed \(seed) test accuracy", value: accuracy, must: .above, bound: 0.8)
            XCTAssertLessThan(loss, 0.5, "seed \(seed)")
            XCTAssertGreaterThan(accuracy, 0.8, "seed \(seed)")
            accuracies.append(accuracy)
        }
        let mean = accuracies.reduce(0, +) / 3
        Margin.report("BasicMotions", "mean test accuracy of 3 seeds", value: mean, must: .above, bound: 0.9)
        XCTAssertGreaterThan(mean, 0.9, "\(accuracies)")
    }

    func testInitFromLoadsByNameAndRejectsMismatches() throws {
        let base = "data: {kind: synthetic, length: 5}\nmodel: {cell: gru, hidden_size: 6, layers: 2}\ntraining: {steps: 5, global_batch_size: 4}\n"
        let (_, first) = try train(base)
        let saved = first.config.output.directory + "/model.safetensors"
        let (again, second) = try train(base, ["model.init_from=\(saved)", "training.steps=0"])
        XCTAssertEqual(second.network.parameters.array, first.network.parameters.array)
        XCTAssertEqual(again.parameterChecksum, first.network.parameters.checksum())
        XCTAssertThrowsError(try train(base, ["model.init_from=\(saved)", "model.hidden_size=7"])) {
            XCTAssertTrue("\($0)".contains("tensor 'rnn.weight_ih_l0' has shape [18, 2], this model needs [21, 2]"), "\($0)")
        }
        XCTAssertThrowsError(try train(base, ["model.init_from=\(saved)", "model.layers=3"])) {
            XCTAssertTrue("\($0)".contains("no tensor 'rnn.weight_ih_l2'"), "\($0)")
        }
        XCTAssertThrowsError(try train(base, ["model.init_from=\(saved)", "model.layers=1"])) {
            XCTAssertTrue("\($0)".contains("tensor 'rnn.bias_hh_l1' [18] is not a parameter of this model"), "\($0)")
        }
        XCTAssertThrowsError(try train(base, ["model.init_from=/nonexistent.safetensors"])) {
            XCTAssertTrue("\($0)".contains("model.init_from: /nonexistent.safetensors: no such file"), "\($0)")
        }
    }

    /// accumulate_steps splits the rows into micro-batches whose gradients are summed before the
    /// update: the same model as one pass over the batch, within float rounding.
    func testGradientAccumulationMatchesOnePass() throws {
        let base = "data: {kind: synthetic, length: 6}\nmodel: {cell: gru, hidden_size: 8, layers: 2}\ntraining: {steps: 10, global_batch_size: 12, optimizer: {name: adam, learning_rate: 0.01}}\n"
        let (_, one) = try train(base)
        let (_, four) = try train(base, ["training.accumulate_steps=4"])
        let a = one.network.parameters.array, b = four.network.parameters.array
        let worst = zip(a, b).map { Double(abs($0 - $1)) / Double(max(1, abs($0))) }.max()!
        Margin.report("Accumulation", "4 micro-batches vs one pass", value: worst, must: .below, bound: 1e-5)
        for i in 0..<a.count { XCTAssertEqual(a[i], b[i], accuracy: 1e-5 * max(1, abs(a[i]))) }
        XCTAssertThrowsError(try train(base, ["training.accumulate_steps=13"])) {
            XCTAssertTrue("\($0)".contains("training.accumulate_steps 13 is more than the 12 rows"), "\($0)")
        }
    }

    /// Truncated BPTT carries the hidden state forward: the loss and the head's gradient equal full
    /// BPTT's; the recurrent gradient loses the terms that cross chunk boundaries.
    func testTruncatedBPTTCarriesTheStateAndCutsTheGradient() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("rnn-dp-tbptt-\(UUID().uuidString).txt").path
        _ = FileManager.default.createFile(atPath: path, contents: Data(String(repeating: "to be or not to be, that is the question\n", count: 50).utf8))
        let base = "data: {kind: text, path: \(path)}\nmodel: {cell: lstm, hidden_size: 8}\ntraining: {steps: 0, global_batch_size: 3, sequence_length: 12}\n"
        let (_, full) = try train(base)
        let (_, cut) = try train(base, ["training.bptt_length=4"])
        let (_, whole) = try train(base, ["training.bptt_length=12"])
        XCTAssertEqual(cut.passes.chunkLength, 4)
        full.network.gradients.zero(); cut.network.gradients.zero(); whole.network.gradients.zero()
        let f = full.passes.gradient(step: 1, rows: 0..<3, diagnostics: false).0
        let c = cut.passes.gradient(step: 1, rows: 0..<3, diagnostics: false).0
        let w = whole.passes.gradient(step: 1, rows: 0..<3, diagnostics: false).0
        XCTAssertEqual(c.count, f.count)
        XCTAssertEqual(c.sum, f.sum, accuracy: 1e-4 * f.sum)
        XCTAssertEqual(w.sum, f.sum)
        XCTAssertEqual(whole.network.gradients.array, full.network.gradients.array, "bptt_length = T is full BPTT")
        let layout = full.network.layout
        for v in [layout.headWeight, layout.headBias] {
            for i in v.range { XCTAssertEqual(cut.network.gradients[i], full.network.gradients[i], accuracy: 1e-5) }
        }
        let whh = layout.layer(0).whh
        let diff = whh.range.map { abs(cut.network.gradients[$0] - full.network.gradients[$0]) }.max()!
        XCTAssertGreaterThan(diff, 1e-4, "the cut removes gradient terms")
        // A last chunk shorter than bptt_length (12 = 5 + 5 + 2): a log step's diagnostics come
        // from that chunk and count its 2 steps.
        let logged = base.replacingOccurrences(of: "steps: 0", with: "steps: 2") + "output: {log_every: 1}\n"
        let (short, shortTrainer) = try train(logged, ["training.bptt_length=5"])
        XCTAssertEqual(short.steps, 2)
        XCTAssertEqual(shortTrainer.passes.lastChunkLength, 2)
        XCTAssertThrowsError(try train("data: {kind: synthetic, length: 8}\ntraining: {bptt_length: 4}\n")) {
            XCTAssertTrue("\($0)".contains("truncated BPTT needs a loss at every step"), "\($0)")
        }
    }

    /// Stateful streams: three steps of 4 characters carry the hidden state from step to step, so
    /// (with a learning rate too small to move the parameters) their losses average to the loss
    /// of one 12-character forward pass over each stream, and differ from three passes that each
    /// start from the initial state. A pass over the streams restarts after (L - 1) / T chunks.
    func testStatefulStreamsCarryTheStateAcrossSteps() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("rnn-dp-streams-\(UUID().uuidString).txt").path
        _ = FileManager.default.createFile(atPath: path, contents: Data(String(repeating: "the quick brown fox jumps over the lazy dog\n", count: 40).utf8))
        let yaml = "data: {kind: text, path: \(path)}\nmodel: {cell: lstm, hidden_size: 8}\ntraining: {steps: 3, global_batch_size: 3, sequence_length: 4, stateful: true, optimizer: {name: sgd, learning_rate: 1.0e-30}}\noutput: {log_every: 1}\n"
        let (_, t) = try train(yaml)
        let lines = try String(contentsOfFile: "\(t.config.output.directory)/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        let losses = try lines.map { try XCTUnwrap((try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])?["loss"] as? Double) }
        XCTAssertEqual(losses.count, 3)
        let text = try XCTUnwrap(t.dataset as? TextDataset)
        let L = text.train.count / 3
        func streamBatch(from start: Int, steps T: Int) -> Batch {
            var tokens = [Int32](repeating: 0, count: T * 3), targets = tokens
            for s in 0..<T { for b in 0..<3 { tokens[s * 3 + b] = text.train[b * L + start + s]; targets[s * 3 + b] = text.train[b * L + start + s + 1] } }
            return Batch(batchSize: 3, steps: T, tokens: tokens, targetClasses: targets)
        }
        let whole = t.network.loss(streamBatch(from: 0, steps: 12)).mean
        XCTAssertEqual(losses.reduce(0, +) / 3, whole, accuracy: 1e-5)
        let restarted = (0..<3).map { t.network.loss(streamBatch(from: 4 * $0, steps: 4)).mean }.reduce(0, +) / 3
        XCTAssertGreaterThan(abs(restarted - whole), 1e-4, "the carried state matters")
        let P = text.streamChunks(globalBatch: 3)
        XCTAssertEqual(P, (L - 1) / 4)
        XCTAssertTrue(text.streamRestarts(step: 0, globalBatch: 3) && text.streamRestarts(step: P, globalBatch: 3))
        XCTAssertFalse(text.streamRestarts(step: 1, globalBatch: 3) || text.streamRestarts(step: P - 1, globalBatch: 3))
        XCTAssertThrowsError(try train("data: {kind: synthetic, length: 8}\ntraining: {stateful: true}\n")) {
            XCTAssertTrue("\($0)".contains("training.stateful: needs text data"), "\($0)")
        }
    }

    func testGlobalBatchSmallerThanRanksIsAnError() throws {
        // A communicator that claims 4 ranks; the check happens before any collective.
        final class FourRanks: Communicator {
            var rank: Int { 0 }; var size: Int { 4 }; var localSize: Int { 4 }; var name: String { "fake" }
            func barrier() throws {}
            func allreduceSum(_ b: UnsafeMutableBufferPointer<Float>) throws {}
            func allreduceSum(_ b: UnsafeMutableBufferPointer<Double>) throws {}
            func allreduceSum(_ b: UnsafeMutableBufferPointer<Int64>) throws {}
            func allreduceMax(_ b: UnsafeMutableBufferPointer<Double>) throws {}
            func broadcast(_ b: UnsafeMutableBufferPointer<Float>, root: Int) throws {}
            func broadcast(_ b: UnsafeMutableBufferPointer<UInt8>, root: Int) throws {}
            func allgather(_ v: UInt64) throws -> [UInt64] { [v, v, v, v] }
            func startAllreduceSum(_ b: UnsafeMutableBufferPointer<Float>) throws -> Int { 0 }
            func startAllreduceSumHalf(_ b: UnsafeMutableBufferPointer<UInt16>, bfloat: Bool) throws -> Int { 0 }
            func allreduceSumHalf(_ b: UnsafeMutableBufferPointer<UInt16>, bfloat: Bool) throws {}
            func test(_ id: Int) throws -> Bool { true }
            func wait(_ id: Int) throws {}
            func abort(code: Int32) -> Never { fatalError() }
            func finalize() {}
        }
        let config = try ConfigLoader.parse(yaml: "data: {kind: synthetic, length: 4}\ntraining: {global_batch_size: 3}\n", name: "t.yaml")
        XCTAssertThrowsError(try Trainer(config: config, comm: FourRanks(), console: Console(rank: 1, size: 4)).run()) {
            XCTAssertEqual("\($0)", "t.yaml: training.global_batch_size 3 is smaller than the number of ranks 4: every rank needs at least one sample")
        }
    }
}
