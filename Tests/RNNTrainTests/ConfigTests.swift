import XCTest
@testable import RNNTrain
import RNN

final class ConfigTests: XCTestCase {
    let minimal = """
    data:
      kind: synthetic
      length: 8
    """

    func parse(_ yaml: String, _ sets: [String] = []) throws -> TrainConfig {
        try ConfigLoader.parse(yaml: yaml, name: "c.yaml", overrides: sets)
    }

    func error(_ yaml: String, _ sets: [String] = []) -> String {
        do {
            _ = try parse(yaml, sets)
            return "no error"
        } catch {
            return "\(error)"
        }
    }

    func testDefaultsAndDerivedValues() throws {
        let c = try parse(minimal)
        XCTAssertEqual(c.data.kind, .synthetic)
        XCTAssertEqual(c.training.sequenceLength, 8)
        XCTAssertEqual(c.model.output, .lastStep)
        XCTAssertEqual(c.training.loss, .mse)
        XCTAssertEqual(c.training.globalBatchSize, 32)
        XCTAssertNil(c.training.clipNorm)
        XCTAssertTrue(c.resolved.contains { $0.key == "model.hidden_size" && $0.value == .int(128) })
        let t = try parse("data: {kind: text, path: x.txt}")
        XCTAssertEqual(t.model.output, .everyStep)
        XCTAssertEqual(t.training.loss, .crossEntropy)
    }

    func testSetOverridesAnyKey() throws {
        let c = try parse(minimal, ["training.steps=7", "training.clip_norm=2.5", "model.activation=relu", "output.directory=/tmp/x"])
        XCTAssertEqual(c.training.steps, 7)
        XCTAssertEqual(c.training.clipNorm, 2.5)
        XCTAssertEqual(c.model.activation, .relu)
        XCTAssertEqual(c.output.directory, "/tmp/x")
        let d = try parse(minimal + "\ntraining:\n  clip_norm: 3\n", ["training.clip_norm=null"])
        XCTAssertNil(d.training.clipNorm)
    }

    func testUnknownKeysAreNamedWithASuggestion() {
        XCTAssertEqual(error(minimal + "\ntraining:\n  optimizer:\n    learnig_rate: 0.1\n"),
                       "c.yaml:6: training.optimizer.learnig_rate: unknown key (did you mean training.optimizer.learning_rate?)")
        XCTAssertEqual(error(minimal + "\nmodle:\n  layers: 2\n"), "c.yaml:4: modle: unknown key (did you mean model?)")
        XCTAssertEqual(error(minimal + "\nzzzzzz: 1\n"), "c.yaml:4: zzzzzz: unknown key")
        XCTAssertEqual(error(minimal, ["training.stepz=3"]), "--set training.stepz: unknown key (did you mean training.steps?)")
        XCTAssertEqual(error(minimal, ["training.steps"]), "--set training.steps: expected key.path=value")
    }

    func testWrongTypesAndRanges() {
        XCTAssertEqual(error(minimal + "\nmodel:\n  hidden_size: many\n"), "c.yaml:5: model.hidden_size: expected an integer in 1...65536, got 'many'")
        XCTAssertEqual(error(minimal + "\nmodel:\n  hidden_size: 0\n"), "c.yaml:5: model.hidden_size: expected an integer in 1...65536, got '0'")
        XCTAssertEqual(error(minimal + "\nmodel:\n  activation: softplus\n"), "c.yaml:5: model.activation: expected one of tanh, sigmoid, relu, leaky_relu, got 'softplus'")
        XCTAssertEqual(error(minimal, ["training.optimizer.learning_rate=0"]), "--set: training.optimizer.learning_rate: expected a number > 0.0 and <= 1000000.0, got '0'")
        XCTAssertEqual(error(minimal, ["training.optimizer.momentum=1"]), "--set: training.optimizer.momentum: expected a number >= 0.0 and < 1.0, got '1'")
        XCTAssertEqual(error(minimal, ["training.average_over_time=maybe"]), "--set: training.average_over_time: expected true or false, got 'maybe'")
        XCTAssertEqual(error(minimal + "\nmodel:\n  layers: [1, 2]\n"), "c.yaml:5: model.layers: expected a single value, got a list")
        XCTAssertEqual(error(minimal + "\nmodel: 3\n"), "c.yaml:4: model: is a section, expected keys under it (cell, activation, leaky_slope, hidden_size, layers, output, layer_norm, batch_norm, bidirectional, embedding_size, tie_weights, dropout, input_dropout, variational_dropout, head_dropout, initial_state, init, init_from)")
        XCTAssertEqual(error(minimal, ["model.hidden_size=null"]), "--set: model.hidden_size: expected an integer in 1...65536, got 'null'")
    }

    func testCrossKeyRules() {
        XCTAssertEqual(error("seed: 1\n"), "c.yaml: data.kind: required (text, csv, synthetic, npy or ts)")
        XCTAssertEqual(error("data:\n  kind: text\n"), "c.yaml: data.path: required when data.kind is text")
        XCTAssertEqual(error("data:\n  kind: text\n  path: a\n  length: 3\n"), "c.yaml: data.length: applies only when data.kind is synthetic (it is text)")
        XCTAssertEqual(error("data: {kind: text, path: a}\ntraining: {loss: mse}\n"), "c.yaml: training.loss: text data predicts characters: use cross_entropy")
        XCTAssertEqual(error(minimal + "\nmodel: {output: every_step}\n"), "c.yaml: model.output: the adding problem has one target per sequence: use last_step")
        XCTAssertEqual(error(minimal + "\n  path: x\n"), "c.yaml: data.path: applies only when data.kind is text or csv or ts (it is synthetic)")
        // A checkpoint's config stores every key, unset nullable ones as null: resuming an LSTM
        // run with --set model.cell=gru must not blame the null forget_bias.
        XCTAssertEqual(try parse(minimal, ["model.cell=gru", "model.init.forget_bias=null"]).model.cell, .gru)
        XCTAssertEqual(error(minimal, ["model.cell=gru", "model.init.forget_bias=1"]), "c.yaml: model.init.forget_bias: applies only when model.cell is lstm (it is gru)")
        XCTAssertEqual(error(minimal, ["model.dropout=0.2"]), "c.yaml: model.dropout: acts between recurrent layers, and model.layers is 1 (model.head_dropout drops the head's input)")
        XCTAssertEqual(error("data: {kind: text, path: a}\nmodel: {input_dropout: 0.1}\n"), "c.yaml: model.input_dropout: applies to dense input or an embedding's output; text without model.embedding_size is one-hot token input")
        XCTAssertEqual(try parse("data: {kind: text, path: a}\nmodel: {input_dropout: 0.1, embedding_size: 16}\n").model.embeddingSize, 16)
        XCTAssertEqual(error("data: {kind: text, path: a}\nmodel: {tie_weights: true, embedding_size: 16, hidden_size: 24}\n"), "c.yaml: model.tie_weights: needs model.embedding_size equal to model.hidden_size (16 vs 24)")
        XCTAssertEqual(try parse("data: {kind: text, path: a}\nmodel: {tie_weights: true, embedding_size: 24, hidden_size: 24}\n").model.tieWeights, true)
        XCTAssertEqual(error("data: {kind: text, path: a}\nmodel: {bidirectional: true}\ntraining: {stateful: true}\n"), "c.yaml: training.stateful: cannot be combined with model.bidirectional: the backward direction needs the whole sequence")
        XCTAssertEqual(error("data: {kind: text, path: a}\nmodel: {bidirectional: true}\ntraining: {bptt_length: 4}\n"), "c.yaml: training.bptt_length: cannot be combined with model.bidirectional: the backward direction needs the whole sequence")
        XCTAssertEqual(try parse(minimal, ["model.bidirectional=true"]).model.bidirectional, true)
        XCTAssertEqual(error(minimal, ["model.dropout=1"]), "--set: model.dropout: expected a number >= 0.0 and < 1.0, got '1'")
        let d = try? parse(minimal, ["model.layers=2", "model.dropout=0.25", "model.head_dropout=0.5"]).model
        XCTAssertEqual(d?.dropout, 0.25)
        XCTAssertEqual(d?.headDropout, 0.5)
    }

    /// parallel.*: what a pipeline cannot split, and the combinations it cannot work with.
    func testPipelineRules() throws {
        let p = try parse(minimal, ["model.layers=4", "parallel.pipeline_stages=2", "parallel.chunk_steps=8", "parallel.stage_layers=3, 1"]).parallel
        XCTAssertEqual(p.pipelineStages, 2)
        XCTAssertEqual(p.chunkSteps, 8)
        XCTAssertEqual(p.stageLayers, [3, 1])
        XCTAssertNil(try parse(minimal).parallel.stageLayers)
        XCTAssertEqual(error(minimal, ["model.layers=2", "parallel.pipeline_stages=3"]), "c.yaml: parallel.pipeline_stages: 3 stages need at least as many layers, but model.layers is 2")
        XCTAssertEqual(error(minimal, ["model.layers=2", "model.bidirectional=true", "parallel.pipeline_stages=2"]),
                       "c.yaml: parallel.pipeline_stages: cannot be combined with model.bidirectional: the backward direction of a layer needs every step of the layer below before its first")
        XCTAssertEqual(error(minimal, ["model.bidirectional=true", "parallel.chunk_steps=4"]),
                       "c.yaml: parallel.chunk_steps: cannot be combined with model.bidirectional: the backward direction of a layer needs every step of the layer below before its first")
        XCTAssertEqual(error(minimal, ["model.batch_norm=true", "parallel.chunk_steps=4"]),
                       "c.yaml: parallel.chunk_steps: cannot be combined with model.batch_norm: its statistics need the whole sequence before the first step (set 0)")
        XCTAssertEqual(error("data: {kind: text, path: a}\n", ["model.layers=2", "model.embedding_size=8", "model.hidden_size=8", "model.tie_weights=true", "parallel.pipeline_stages=2"]),
                       "c.yaml: model.tie_weights: cannot be combined with parallel.pipeline_stages: the embedding lives on the first stage and the head on the last")
        XCTAssertEqual(error(minimal, ["model.layers=2", "training.local_sgd_steps=4", "parallel.pipeline_stages=2"]),
                       "c.yaml: training.local_sgd_steps: cannot be combined with parallel.pipeline_stages: a replica's stages must update from one gradient")
        XCTAssertEqual(error(minimal, ["model.layers=3", "parallel.pipeline_stages=2", "parallel.stage_layers=2,2"]),
                       "c.yaml: parallel.stage_layers: '2,2' is not 2 positive layer counts (one per stage of parallel.pipeline_stages) adding up to model.layers 3")
        XCTAssertEqual(error(minimal, ["model.layers=3", "parallel.pipeline_stages=2", "parallel.stage_layers=3,0"]),
                       "c.yaml: parallel.stage_layers: '3,0' is not 2 positive layer counts (one per stage of parallel.pipeline_stages) adding up to model.layers 3")
    }

    /// The balanced split: the largest stage's cost is least; the first layer's input width and
    /// the head decide where the cut falls.
    func testBalancedStageSplit() {
        func spec(layers: Int, input: Int, output: OutputMode = .everyStep, vocabulary: Int = 65) -> ModelSpec {
            ModelSpec(cell: .lstm, activation: .tanh, input: .dense(features: input), hiddenSize: 24, layers: layers,
                      outputSize: vocabulary, output: output, loss: .crossEntropy)
        }
        // Layer 0 costs 4*24*(65+24) = 8544, the others 4*24*48 = 4608, the top one also 65*24 for the head.
        // (Token input is a gather: layer 0 then costs 4*24*24 only, and with 4 layers of H=16 the
        // head's 65*16 tips the split to 3 + 1.)
        let tokens = ModelSpec(cell: .lstm, activation: .tanh, input: .tokens(vocabulary: 65), hiddenSize: 16, layers: 4,
                               outputSize: 65, output: .everyStep, loss: .crossEntropy)
        XCTAssertEqual(PipelineLayout.balanced(tokens, stages: 2, steps: 10), [0..<3, 3..<4])
        // Idle time: balanced stages idle (S-1)/(C+S-1); the split 2 + 2 costs 3072 and 5136.
        XCTAssertEqual(PipelineLayout.modelledIdle(tokens, layers: [0..<2, 2..<4], steps: 10, chunks: 1), 1 - (3072.0 / 5136 + 1) / 2 * 0.5, accuracy: 1e-12)
        XCTAssertEqual(PipelineLayout.modelledIdle(tokens, layers: [0..<1, 1..<2, 2..<3, 3..<4].map { $0 }, steps: 10, chunks: 5),
                       1 - (1024.0 + 2048 + 2048 + 3088) / 3088 / 4 * 5 / 8, accuracy: 1e-12)
        XCTAssertEqual(PipelineLayout.balanced(spec(layers: 4, input: 65), stages: 2, steps: 10), [0..<2, 2..<4])
        XCTAssertEqual(PipelineLayout.balanced(spec(layers: 4, input: 65), stages: 4, steps: 10), [0..<1, 1..<2, 2..<3, 3..<4])
        // A wide input puts layer 0 alone on its stage.
        XCTAssertEqual(PipelineLayout.balanced(spec(layers: 4, input: 1000), stages: 2, steps: 10), [0..<1, 1..<4])
        // A huge head on the last layer leaves it alone.
        XCTAssertEqual(PipelineLayout.balanced(spec(layers: 4, input: 16, vocabulary: 5000), stages: 2, steps: 10), [0..<3, 3..<4])
        XCTAssertEqual(PipelineLayout.ranges(counts: [2, 1, 1]), [0..<2, 2..<3, 3..<4])
    }

    /// Settings of another optimizer or schedule are ignored with a warning (a --set of the name
    /// leaves them behind); they do not change the run.
    func testSettingsOfAnotherOptimizerAreIgnoredWithAWarning() throws {
        let c = try parse(minimal + "\ntraining:\n  optimizer: {name: sgd, momentum: 0.9}\n", ["training.optimizer.name=adam"])
        XCTAssertEqual(c.training.optimizer.kind, .adam)
        XCTAssertEqual(c.training.optimizer.momentum, 0)
        XCTAssertEqual(c.training.learningRate, 1e-3)  // PyTorch's Adam default
        XCTAssertEqual(c.warnings, ["c.yaml: training.optimizer.momentum: ignored: applies only when training.optimizer.name is sgd or rmsprop (it is adam)"])
        XCTAssertEqual(try parse(minimal).warnings, [])
    }

    func testOptimizerAndScheduleDefaultsArePyTorchs() throws {
        let adamw = try parse(minimal, ["training.optimizer.name=adamw"]).training
        XCTAssertEqual(adamw.optimizer.weightDecay, 0.01)
        XCTAssertEqual(adamw.optimizer.beta2, 0.999)
        XCTAssertEqual(adamw.optimizer.resolvedEps, 1e-8)
        let adagrad = try parse(minimal, ["training.optimizer.name=adagrad"]).training
        XCTAssertEqual(adagrad.learningRate, 0.01)
        XCTAssertEqual(adagrad.optimizer.resolvedEps, 1e-10)
        let plateau = try parse(minimal, ["training.schedule.name=plateau"]).training.schedule
        XCTAssertEqual(plateau, .plateau(factor: 0.1, patience: 10, threshold: 1e-4, cooldown: 0, minLR: 0))
        XCTAssertEqual(error(minimal, ["training.schedule.name=step"]), "c.yaml: training.schedule.step_size: required for the step schedule")
        XCTAssertEqual(try parse(minimal, ["training.schedule.name=cosine", "training.schedule.warmup_steps=5", "training.steps=50"]).training.schedule,
                       .cosine(warmup: 5, total: 50, minLR: 0))
        XCTAssertEqual(error(minimal, ["training.optimizer.nesterov=true"]), "c.yaml: training.optimizer.nesterov: needs momentum > 0 and dampening 0 (as in PyTorch)")
    }

    func testDataKindsFromFiles() throws {
        let ts = try parse("data: {kind: ts, path: a.ts}\n")
        XCTAssertEqual(ts.training.loss, .crossEntropy)
        XCTAssertEqual(ts.model.output, .lastStep)
        let npy = try parse("data: {kind: npy, inputs: x.npy, targets: y.npy}\n")
        XCTAssertNil(npy.training.loss)  // from the arrays
        XCTAssertEqual(npy.data.validationFraction, 0.1)
        XCTAssertEqual(error("data: {kind: npy, inputs: x.npy}\n"), "c.yaml: data.targets: required when data.kind is npy")
        XCTAssertEqual(error("data: {kind: npy, inputs: x.npy, targets: y.npy}\ntraining: {sequence_length: 5}\n"),
                       "c.yaml: training.sequence_length: comes from the data when data.kind is npy; remove it")
        XCTAssertEqual(error("data: {kind: npy, inputs: x.npy, targets: y.npy, validation_inputs: v.npy}\n"),
                       "c.yaml: data.validation_targets: give both validation_inputs and validation_targets, or neither")
    }

    func testMalformedYAMLAndDuplicates() {
        XCTAssertTrue(error("data: [unclosed\n").hasPrefix("c.yaml: invalid YAML:"), error("data: [unclosed\n"))
        XCTAssertFalse(error("data: [unclosed\n").contains("\n"))
        XCTAssertEqual(error("- 1\n- 2\n"), "c.yaml: the config must be a mapping of keys (like 'model: {hidden_size: 64}')")
        XCTAssertEqual(error(minimal + "\nseed: 1\nseed: 2\n"), "c.yaml:5: seed: given twice")
    }

    func testMissingConfigFile() {
        XCTAssertThrowsError(try ConfigLoader.load(path: "/nonexistent/c.yaml")) {
            XCTAssertEqual("\($0)", "/nonexistent/c.yaml: no such config file")
        }
    }

    func testEveryShippedConfigParses() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let dir = root.appendingPathComponent("configs")
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".yaml") }
        XCTAssertGreaterThanOrEqual(files.count, 3)
        for f in files { XCTAssertNoThrow(try ConfigLoader.load(path: dir.appendingPathComponent(f).path), f) }
    }
}

final class ConfigReferenceTests: XCTestCase {
    /// docs/CONFIG.md is the schema's markdown form; regenerate with `rnn-dp keys --markdown > docs/CONFIG.md`.
    func testDocsConfigMatchesTheSchema() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let doc = try String(contentsOf: root.appendingPathComponent("docs/CONFIG.md"), encoding: .utf8)
        XCTAssertEqual(doc, ConfigReference.markdown, "docs/CONFIG.md is stale: run rnn-dp keys --markdown > docs/CONFIG.md")
        XCTAssertTrue(doc.contains("| `training.optimizer.beta2` |"))
    }
}
