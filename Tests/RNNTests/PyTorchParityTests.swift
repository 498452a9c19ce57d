import Foundation
import XCTest
@testable import RNN
import Margins

/// rnn-dp's numerics against PyTorch: losses and gradients of every cell, loss, and output mode,
/// three steps of every optimizer (with clipping), and every learning-rate schedule.
///
/// The reference numbers are the committed fixtures in Fixtures/parity, made by
/// `python3 scripts/make_parity_fixtures.py` (PyTorch, float32, CPU); see that script for what
/// each file holds. These tests need neither Python nor torch: they read the safetensors files
/// with the small reader below, rebuild each model, batch, optimizer, and schedule from the
/// fixture's metadata and tensors, run rnn-dp in Float, and compare.
///
/// Tolerance (see `mismatch`): element i of a float32 tensor b (PyTorch) and a (rnn-dp) agree when
///     |a_i - b_i| <= 1e-5 * max(|b_i|, floorFraction * max_j |b_j|),   floorFraction = 0.1.
/// Both sides are float32 evaluations of the same function that differ only in the order and
/// grouping of their roundings (BLAS blocking, gather vs one-hot product, fused operations), so
/// each carries an error of a few float32 ulps (2^-23 ~ 1.2e-7) of the *terms* it combined. For
/// an element of the size of those terms that is a relative error of ~1e-6, well inside 1e-5.
/// But an element that is small because its terms cancel (a gradient sums T*B contributions of
/// both signs; a weight after an update is a difference) still carries an error of a few ulps of
/// the terms, whose scale the tensor's max-abs measures -- so no relative tolerance can hold for
/// it, and the floor judges elements below 10% of the tensor's max-abs by the absolute error
/// 1e-5 * 0.1 * maxAbs = 1e-6 * maxAbs, about 8 float32 ulps of the tensor's scale.
/// Measured when the fixtures were made: rnn-dp vs PyTorch differ by up to 6.7e-7 * maxAbs
/// (about 5.6 ulps); PyTorch's own float32 gradients differ from a float64 evaluation by up to
/// 5e-7 * maxAbs (the generator prints it), and with a floor of 1e-3 * maxAbs 23 tensors would
/// fail from rounding alone (the worst element needs a floor of 0.027). Every real mistake -- a wrong gate order,
/// derivative, normalization, or optimizer rule -- shows as an error of the order of the values
/// themselves, orders of magnitude above 1e-6 of the scale (testComparisonDetectsSmallErrors).
final class PyTorchParityTests: XCTestCase {
    static let relativeTolerance = 1e-5
    static let floorFraction = 0.1
    /// Learning rates are computed in Double on both sides: closed forms here, running products
    /// (StepLR, ExponentialLR, CosineAnnealingLR are chainable) in torch.
    static let rateTolerance = 1e-12

    /// The largest |diff| / tolerance over every element compared by this class (its margin).
    static var worstRatioSeen = 0.0
    override class func tearDown() {
        Margin.report("PyTorchParity", "worst |diff| / tolerance over all fixtures", value: worstRatioSeen, must: .below, bound: 1)
        super.tearDown()
    }

    static let expectedGradientFixtures = 30  // {rnn tanh, rnn relu, lstm, gru} x {ce, mse} x {every, last},
                                              // {rnn tanh, lstm, gru} x {every, last} through an nn.Embedding,
                                              // {lstm, gru} with the head tied to the embedding,
                                              // and {rnn tanh, lstm, gru} x {every, last} bidirectional
    static let expectedOptimizerFixtures = 10
    static let expectedPackedFixtures = 24  // {rnn tanh, lstm, gru} x {1, 2 layers} x {uni, bi} x {every, last}
    static let expectedSchedules: Set<String> = ["constant", "step", "exponential", "cosine", "triangular", "plateau"]

    // MARK: - Fixture files

    struct Tensor {
        let dtype: String
        let shape: [Int]
        /// The elements, widened to Double (exact for F32, I32 and small I64).
        let values: [Double]
    }

    struct Fixture {
        let name: String
        let tensors: [String: Tensor]
        let metadata: [String: String]

        func tensor(_ key: String) throws -> Tensor {
            try XCTUnwrap(tensors[key], "\(name): no tensor \(key)")
        }
        func string(_ key: String) throws -> String {
            try XCTUnwrap(metadata[key], "\(name): no metadata \(key)")
        }
        func int(_ key: String) throws -> Int {
            try XCTUnwrap(Int(try string(key)), "\(name): metadata \(key) is not an integer")
        }
        func double(_ key: String) throws -> Double {
            try XCTUnwrap(Double(try string(key)), "\(name): metadata \(key) is not a number")
        }
        func optionalDouble(_ key: String) throws -> Double? {
            try metadata[key].map { try XCTUnwrap(Double($0), "\(name): metadata \(key) is not a number") }
        }
        func bool(_ key: String) throws -> Bool {
            let s = try string(key)
            guard s == "true" || s == "false" else { throw ParityError("\(name): metadata \(key) = \(s) is not a boolean") }
            return s == "true"
        }
    }

    struct ParityError: Error, CustomStringConvertible {
        let description: String
        init(_ d: String) { description = d }
    }

    static var fixtureDirectory: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/parity")
    }

    /// The fixtures whose file names start with `prefix`, sorted by name.
    static func fixtures(_ prefix: String) throws -> [Fixture] {
        let names = try FileManager.default.contentsOfDirectory(atPath: fixtureDirectory.path)
            .filter { $0.hasPrefix(prefix) && $0.hasSuffix(".safetensors") }.sorted()
        return try names.map { try read(fixtureDirectory.appendingPathComponent($0)) }
    }

    /// safetensors: u64 little-endian header length N, N bytes of JSON
    /// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {string: string}},
    /// then the little-endian data, offsets relative to its start. F32, F64, I32 and I64 only.
    static func read(_ url: URL) throws -> Fixture {
        let bytes = [UInt8](try Data(contentsOf: url))
        let name = url.lastPathComponent
        func word(_ at: Int, _ width: Int) -> UInt64 {
            (0..<width).reduce(UInt64(0)) { $0 | UInt64(bytes[at + $1]) << (8 * UInt64($1)) }
        }
        guard bytes.count >= 8, case let n = Int(word(0, 8)), 8 + n <= bytes.count,
              let header = try JSONSerialization.jsonObject(with: Data(bytes[8..<(8 + n)])) as? [String: Any]
        else { throw ParityError("\(name): not a safetensors file") }
        let dataStart = 8 + n
        func ints(_ any: Any?) -> [Int]? { (any as? [Any])?.compactMap { ($0 as? NSNumber)?.intValue } }
        var tensors: [String: Tensor] = [:]
        var metadata: [String: String] = [:]
        for (key, entry) in header {
            if key == "__metadata__" {
                metadata = entry as? [String: String] ?? [:]
                continue
            }
            guard let e = entry as? [String: Any], let dtype = e["dtype"] as? String, let shape = ints(e["shape"]),
                  let offsets = ints(e["data_offsets"]), offsets.count == 2,
                  let width = ["F32": 4, "F64": 8, "I32": 4, "I64": 8][dtype]
            else { throw ParityError("\(name): unsupported entry \(key)") }
            let count = shape.reduce(1, *)
            guard offsets[1] - offsets[0] == count * width, dataStart + offsets[1] <= bytes.count
            else { throw ParityError("\(name): \(key) has bad data offsets") }
            let values: [Double] = (0..<count).map { i in
                let bits = word(dataStart + offsets[0] + i * width, width)
                switch dtype {
                case "F32": return Double(Float(bitPattern: UInt32(bits)))
                case "F64": return Double(bitPattern: bits)
                case "I32": return Double(Int32(bitPattern: UInt32(bits)))
                default: return Double(Int64(bitPattern: bits))
                }
            }
            tensors[key] = Tensor(dtype: dtype, shape: shape, values: values)
        }
        return Fixture(name: name, tensors: tensors, metadata: metadata)
    }

    // MARK: - Building rnn-dp's side from a fixture

    static func spec(_ f: Fixture) throws -> ModelSpec {
        let width = try f.int("input_width")
        let input: InputKind
        switch try f.string("input") {
        case "tokens": input = .tokens(vocabulary: width)
        case "dense": input = .dense(features: width)
        case let s: throw ParityError("\(f.name): unknown input \(s)")
        }
        var spec = ModelSpec(cell: try XCTUnwrap(CellKind(rawValue: try f.string("cell")), f.name),
                         activation: try XCTUnwrap(Activation(rawValue: try f.string("activation")), f.name),
                         input: input, hiddenSize: try f.int("hidden"), layers: try f.int("layers"),
                         outputSize: try f.int("outputs"),
                         output: try XCTUnwrap(OutputMode(rawValue: try f.string("output")), f.name),
                         loss: try XCTUnwrap(LossKind(rawValue: try f.string("loss")), f.name),
                         averageOverTime: try f.bool("average_over_time"))
        if f.metadata["embedding"] != nil { spec.embeddingSize = try f.int("embedding") }
        if f.metadata["tie_weights"] != nil { spec.tieWeights = try f.bool("tie_weights") }
        if f.metadata["bidirectional"] != nil { spec.bidirectional = try f.bool("bidirectional") }
        return spec
    }

    /// The fixture's batch, with its shapes checked against the spec.
    static func batch(_ f: Fixture, _ spec: ModelSpec) throws -> Batch {
        let T = try f.int("steps"), B = try f.int("batch")
        var batch = Batch(batchSize: B, steps: T)
        let rows = spec.output == .everyStep ? [T, B] : [B]
        switch spec.input {
        case .tokens:
            let t = try f.tensor("input.tokens")
            XCTAssertEqual(t.shape, [T, B], "\(f.name) input.tokens shape")
            batch.tokens = t.values.map { Int32($0) }
        case .dense(let I):
            let t = try f.tensor("input.features")
            XCTAssertEqual(t.shape, [T, B, I], "\(f.name) input.features shape")
            batch.features = t.values.map { Float($0) }
        }
        switch spec.loss {
        case .crossEntropy:
            let t = try f.tensor("target.classes")
            XCTAssertEqual(t.shape, rows, "\(f.name) target.classes shape")
            batch.targetClasses = t.values.map { Int32($0) }
        case .mse:
            let t = try f.tensor("target.values")
            XCTAssertEqual(t.shape, rows + [spec.outputSize], "\(f.name) target.values shape")
            batch.targetValues = t.values.map { Float($0) }
        }
        return batch
    }

    /// Copies the tensors `prefix + name` into the parameters. Every view of the layout must be
    /// present with its shape, and every model tensor under `prefix` must belong to the layout.
    static func loadWeights(_ net: Network<Float>, from f: Fixture, prefix: String) throws {
        for v in net.layout.views {
            let t = try f.tensor(prefix + v.name)
            guard t.shape == v.shape else {
                throw ParityError("\(f.name): \(prefix + v.name) has shape \(t.shape), rnn-dp's layout \(v.shape)")
            }
            for (i, x) in t.values.enumerated() { net.parameters[v.offset + i] = Float(x) }
        }
        let modelTensors = f.tensors.keys.filter { $0.hasPrefix(prefix + "rnn.") || $0.hasPrefix(prefix + "head.") }
        let unknown = modelTensors.filter { net.layout.view(String($0.dropFirst(prefix.count))) == nil }
        XCTAssertEqual(unknown.sorted(), [], "\(f.name): tensors that rnn-dp's layout lacks")
    }

    /// The optimizer settings the fixture describes. Every hyper-parameter torch used is in the
    /// metadata; unknown keys fail the test, so a new one cannot be silently ignored.
    static func optimizerSettings(_ f: Fixture) throws -> OptimizerSettings {
        let kind = try XCTUnwrap(OptimizerSettings.Kind(rawValue: try f.string("kind")), f.name)
        var s = OptimizerSettings(kind: kind)
        s.weightDecay = try f.double("weight_decay")
        switch kind {
        case .sgd:
            s.momentum = try f.double("momentum")
            s.dampening = try f.double("dampening")
            s.nesterov = try f.bool("nesterov")
        case .adam, .adamw:
            s.beta1 = try f.double("beta1")
            s.beta2 = try f.double("beta2")
            s.eps = try f.double("eps")
        case .rmsprop:
            s.alpha = try f.double("alpha")
            s.eps = try f.double("eps")
            s.momentum = try f.double("momentum")
            s.centered = try f.bool("centered")
        case .adagrad:
            s.lrDecay = try f.double("lr_decay")
            s.eps = try f.double("eps")
            s.initialAccumulator = try f.double("initial_accumulator")
        }
        let known: Set<String> = [
            "fixture", "generator", "torch_version", "variant", "cell", "activation", "input", "input_width", "hidden",
            "layers", "outputs", "output", "loss", "average_over_time", "steps", "batch", "optimizer_steps", "kind",
            "lr", "weight_decay", "momentum", "dampening", "nesterov", "beta1", "beta2", "eps", "alpha", "centered",
            "lr_decay", "initial_accumulator", "clip_norm", "clip_value", "schedule", "embedding", "tie_weights", "bidirectional",
            "lengths",
        ]
        let unknown = Set(f.metadata.keys).subtracting(known).filter { !$0.hasPrefix("step.") }
        XCTAssertEqual(unknown.sorted(), [], "\(f.name): metadata keys this test does not apply")
        return s
    }

    /// The schedule `name` with its parameters from the metadata keys "<name>.<parameter>".
    static func schedule(_ name: String, _ f: Fixture) throws -> LearningRateSchedule {
        func d(_ k: String) throws -> Double { try f.double("\(name).\(k)") }
        func i(_ k: String) throws -> Int { try f.int("\(name).\(k)") }
        let s: Schedule
        switch name {
        case "constant": s = .constant
        case "step": s = .step(stepSize: try i("step_size"), gamma: try d("gamma"))
        case "exponential": s = .exponential(gamma: try d("gamma"))
        case "cosine": s = .cosine(warmup: try i("warmup"), total: try i("total"), minLR: try d("min_lr"))
        case "triangular": s = .triangular(maxLR: try d("max_lr"), stepSizeUp: try i("step_size_up"))
        case "plateau":
            s = .plateau(factor: try d("factor"), patience: try i("patience"), threshold: try d("threshold"),
                         cooldown: try i("cooldown"), minLR: try d("min_lr"))
        default: throw ParityError("\(f.name): unknown schedule \(name)")
        }
        return LearningRateSchedule(base: try d("base_lr"), schedule: s)
    }

    // MARK: - Comparison

    /// nil when every element agrees (see the type's documentation), else a description of the
    /// disagreement: how many elements, and the worst one.
    static func mismatch(_ actual: [Double], _ expected: [Double], relative: Double = relativeTolerance,
                         floorFraction: Double = floorFraction) -> String? {
        guard actual.count == expected.count else { return "\(actual.count) elements, expected \(expected.count)" }
        let maxAbs = expected.reduce(0) { max($0, abs($1)) }
        var bad = 0
        var worst: (i: Int, ratio: Double, tol: Double) = (0, 0, 0)
        for i in 0..<expected.count {
            let tol = relative * max(abs(expected[i]), floorFraction * maxAbs)
            let err = abs(actual[i] - expected[i])
            if tol > 0 { worstRatioSeen = max(worstRatioSeen, err / tol) }
            if !(err <= tol) {  // also catches NaN
                bad += 1
                let ratio = tol > 0 ? err / tol : .infinity
                if !(ratio <= worst.ratio) { worst = (i, ratio, tol) }
            }
        }
        guard bad > 0 else { return nil }
        let i = worst.i
        return "\(bad) of \(expected.count) elements out of tolerance; worst [\(i)]: rnn-dp \(actual[i]), "
            + "PyTorch \(expected[i]), |diff| \(abs(actual[i] - expected[i])) > tol \(worst.tol) (max-abs \(maxAbs))"
    }

    func assertClose(_ actual: [Double], _ expected: [Double], _ fixture: String, _ tensor: String,
                     relative: Double = relativeTolerance, floorFraction: Double = floorFraction,
                     file: StaticString = #filePath, line: UInt = #line) {
        if let m = Self.mismatch(actual, expected, relative: relative, floorFraction: floorFraction) {
            XCTFail("\(fixture) \(tensor): \(m)", file: file, line: line)
        }
    }

    /// Compares every `prefix + name` tensor of the fixture with rnn-dp's buffer.
    func assertBufferMatches(_ buffer: Buffer<Float>, _ layout: ParameterLayout, _ f: Fixture, prefix: String,
                             file: StaticString = #filePath, line: UInt = #line) throws {
        for v in layout.views {
            let t = try f.tensor(prefix + v.name)
            XCTAssertEqual(t.shape, v.shape, "\(f.name) \(prefix + v.name) shape", file: file, line: line)
            assertClose(v.range.map { Double(buffer[$0]) }, t.values, f.name, prefix + v.name, file: file, line: line)
        }
    }

    /// Runs one fixture's checks; an error (a missing tensor, say) fails that fixture only.
    static func each(_ f: Fixture, _ body: () throws -> Void) {
        do { try body() } catch { XCTFail("\(f.name): \(error)") }
    }

    // MARK: - Tests

    /// Loss and every gradient of one forward/backward, for every cell, loss, and output mode.
    func testLossAndGradientsMatchPyTorch() throws {
        let fixtures = try Self.fixtures("grad_")
        XCTAssertEqual(fixtures.count, Self.expectedGradientFixtures, "gradient fixtures in \(Self.fixtureDirectory.path)")
        for f in fixtures { Self.each(f) {
            XCTAssertEqual(f.metadata["fixture"], "gradient", f.name)
            let spec = try Self.spec(f)
            let net = Network<Float>(spec: spec)
            try Self.loadWeights(net, from: f, prefix: "")
            let batch = try Self.batch(f, spec)
            net.gradients.zero()
            let stats = net.lossAndGradient(batch)
            net.normalizeGradients(globalSamples: batch.batchSize, steps: batch.steps)
            XCTAssertEqual(stats.count, spec.output == .everyStep ? batch.steps * batch.batchSize : batch.batchSize,
                           "\(f.name) loss terms")
            assertClose([stats.mean], try f.tensor("loss").values, f.name, "loss")
            try assertBufferMatches(net.gradients, net.layout, f, prefix: "grad.")
            let gradTensors = f.tensors.keys.filter { $0.hasPrefix("grad.") }
            XCTAssertEqual(gradTensors.count, net.layout.views.count, "\(f.name): gradient tensors vs layout")
        } }
    }

    /// Sequences of different lengths against pack_padded_sequence: the fixture's padded batch
    /// (padding filled with random values, which must not matter) packed with Batch.packing, then
    /// the loss over valid terms, the outputs, every gradient and three SGD-with-momentum steps.
    func testPackedSequencesMatchPyTorch() throws {
        let fixtures = try Self.fixtures("packed_")
        XCTAssertEqual(fixtures.count, Self.expectedPackedFixtures, "packed fixtures in \(Self.fixtureDirectory.path)")
        var ragged = 0
        for f in fixtures { Self.each(f) {
            XCTAssertEqual(f.metadata["fixture"], "packed", f.name)
            let spec = try Self.spec(f)
            let T = try f.int("steps"), B = try f.int("batch"), I = spec.input.width, O = spec.outputSize
            let lengths = try f.tensor("input.lengths").values.map { Int($0) }
            XCTAssertEqual(lengths.map(String.init).joined(separator: ","), f.metadata["lengths"], f.name)
            let everyStep = spec.output == .everyStep
            let (batch, order) = Batch.packing(lengths: lengths, steps: T, features: try f.tensor("input.features").values.map { Float($0) },
                                               featureWidth: I, targetValues: try f.tensor("target.values").values.map { Float($0) },
                                               targetWidth: O, everyStep: everyStep)
            XCTAssertTrue(batch.isRagged, f.name)
            if batch.isRagged { ragged += 1 }
            let net = Network<Float>(spec: spec)
            try Self.loadWeights(net, from: f, prefix: "")
            net.gradients.zero()
            let stats = net.lossAndGradient(batch)
            XCTAssertEqual(stats.steps, lengths.reduce(0, +), "\(f.name) steps computed")
            XCTAssertEqual(stats.count, everyStep ? lengths.reduce(0, +) : B, "\(f.name) loss terms")
            net.normalizeGradients(globalSamples: B, globalSteps: stats.steps)
            assertClose([stats.mean], try f.tensor("loss").values, f.name, "loss")
            try assertBufferMatches(net.gradients, net.layout, f, prefix: "grad.")
            // The outputs, packed, against torch's padded ones (zeros at padding).
            net.forward(batch)
            let padded = try f.tensor("output").values
            var expected: [Double] = [], actual: [Double] = []
            if everyStep {
                var row = 0
                for t in 0..<T { for i in 0..<B where lengths[order[i]] > t {
                    for o in 0..<O { expected.append(padded[(t * B + order[i]) * O + o]); actual.append(Double(net.outputs[row * O + o])) }
                    row += 1
                } }
                XCTAssertEqual(row, net.lastRows, f.name)
            } else {
                for i in 0..<B { for o in 0..<O { expected.append(padded[order[i] * O + o]); actual.append(Double(net.outputs[i * O + o])) } }
            }
            assertClose(actual, expected, f.name, "output")
            // Three optimizer steps from init.*.
            try Self.loadWeights(net, from: f, prefix: "init.")
            let optimizer = makeOptimizer(try Self.optimizerSettings(f), count: net.layout.count, as: Float.self)
            let losses = try f.tensor("losses").values
            for step in 0..<(try f.int("optimizer_steps")) {
                net.gradients.zero()
                let s = net.lossAndGradient(batch)
                net.normalizeGradients(globalSamples: B, globalSteps: s.steps)
                assertClose([s.mean], [losses[step]], f.name, "losses[\(step)]")
                optimizer.step(parameters: net.parameters, gradients: net.gradients, learningRate: try f.double("lr"))
            }
            try assertBufferMatches(net.parameters, net.layout, f, prefix: "final.")
        } }
        XCTAssertEqual(ragged, fixtures.count, "every packed fixture has lengths that differ")
    }

    /// Three steps of every optimizer (torch.optim, single-tensor rules), some with clipping.
    func testOptimizerStepsMatchPyTorch() throws {
        let fixtures = try Self.fixtures("optim_")
        XCTAssertEqual(fixtures.count, Self.expectedOptimizerFixtures, "optimizer fixtures in \(Self.fixtureDirectory.path)")
        var clippedByNorm = 0, clippedByValue = 0
        for f in fixtures { Self.each(f) {
            XCTAssertEqual(f.metadata["fixture"], "optimizer", f.name)
            let spec = try Self.spec(f)
            let net = Network<Float>(spec: spec)
            try Self.loadWeights(net, from: f, prefix: "init.")
            let batch = try Self.batch(f, spec)
            let settings = try Self.optimizerSettings(f)
            let optimizer = makeOptimizer(settings, count: net.layout.count, as: Float.self)
            let lr = try f.double("lr")
            let clipNorm = try f.optionalDouble("clip_norm"), clipValue = try f.optionalDouble("clip_value")
            let losses = try f.tensor("losses").values
            let steps = try f.int("optimizer_steps")
            XCTAssertEqual(losses.count, steps, f.name)
            for step in 0..<steps {
                net.gradients.zero()
                let stats = net.lossAndGradient(batch)
                net.normalizeGradients(globalSamples: batch.batchSize, steps: batch.steps)
                assertClose([stats.mean], [losses[step]], f.name, "losses[\(step)] (loss before step \(step))")
                if let clipNorm {
                    let norm = clipGradientNorm(net.gradients, maxNorm: clipNorm)
                    XCTAssertGreaterThan(norm, clipNorm, "\(f.name) step \(step): the fixture's clip_norm must clip")
                    clippedByNorm += 1
                }
                if let clipValue {
                    clipGradientValue(net.gradients, clip: clipValue)
                    clippedByValue += 1
                }
                optimizer.step(parameters: net.parameters, gradients: net.gradients, learningRate: lr)
            }
            XCTAssertEqual(optimizer.steps, steps, f.name)
            try assertBufferMatches(net.parameters, net.layout, f, prefix: "final.")
        } }
        XCTAssertGreaterThan(clippedByNorm, 0, "no fixture exercised clip_grad_norm_")
        XCTAssertGreaterThan(clippedByValue, 0, "no fixture exercised clip_grad_value_")
    }

    /// The learning rate of every schedule over the fixture's steps, and plateau's reductions
    /// driven by the stored validation losses.
    func testLearningRateSchedulesMatchPyTorch() throws {
        let fixtures = try Self.fixtures("schedules")
        XCTAssertEqual(fixtures.count, 1, "schedules.safetensors in \(Self.fixtureDirectory.path)")
        guard let f = fixtures.first else { return }
        let names = try f.string("schedules").split(separator: ",").map(String.init)
        XCTAssertEqual(Set(names), Self.expectedSchedules, f.name)
        for name in names { Self.each(f) {
            let expected = try f.tensor("lr.\(name)").values
            var schedule = try Self.schedule(name, f)
            var actual: [Double] = []
            if name == "plateau" {
                let metrics = try f.tensor("plateau.metrics").values
                XCTAssertEqual(metrics.count, expected.count, f.name)
                var previous = schedule.learningRate(step: 0)
                for (i, m) in metrics.enumerated() {
                    let reduced = schedule.observe(validationLoss: m)
                    let rate = schedule.learningRate(step: i)
                    XCTAssertEqual(reduced, i < expected.count && expected[i] < previous,
                                   "\(f.name) lr.plateau: observe's result after metric [\(i)] = \(m)")
                    previous = rate
                    actual.append(rate)
                }
            } else {
                actual = (0..<expected.count).map { schedule.learningRate(step: $0) }
            }
            assertClose(actual, expected, f.name, "lr.\(name)", relative: Self.rateTolerance, floorFraction: 0)
        } }
    }

    /// SGD with momentum under a StepLR schedule: the rate of each update comes from the schedule.
    func testScheduledSGDMatchesPyTorch() throws {
        let fixtures = try Self.fixtures("sched_sgd")
        XCTAssertEqual(fixtures.count, 1, "sched_sgd.safetensors in \(Self.fixtureDirectory.path)")
        guard let f = fixtures.first else { return }
        let spec = try Self.spec(f)
        let net = Network<Float>(spec: spec)
        try Self.loadWeights(net, from: f, prefix: "init.")
        let batch = try Self.batch(f, spec)
        let optimizer = makeOptimizer(try Self.optimizerSettings(f), count: net.layout.count, as: Float.self)
        let schedule = try Self.schedule(try f.string("schedule"), f)
        let losses = try f.tensor("losses").values
        let steps = try f.int("optimizer_steps")
        let rates = (0..<steps).map { schedule.learningRate(step: $0) }
        assertClose(rates, try f.tensor("lrs").values, f.name, "lrs", relative: Self.rateTolerance, floorFraction: 0)
        for step in 0..<steps {
            net.gradients.zero()
            let stats = net.lossAndGradient(batch)
            net.normalizeGradients(globalSamples: batch.batchSize, steps: batch.steps)
            assertClose([stats.mean], [losses[step]], f.name, "losses[\(step)] (loss before step \(step))")
            optimizer.step(parameters: net.parameters, gradients: net.gradients, learningRate: rates[step])
        }
        try assertBufferMatches(net.parameters, net.layout, f, prefix: "final.")
    }

    /// The comparison must be able to fail: an error of 1e-4 relative in one element, or a
    /// near-zero element off by a few 1e-6 of the tensor's scale, is caught; rounding is not.
    func testComparisonDetectsSmallErrors() throws {
        let seen = Self.worstRatioSeen
        defer { Self.worstRatioSeen = seen }  // its deliberate errors are not a margin
        let f = try Self.read(Self.fixtureDirectory.appendingPathComponent("grad_lstm_mse_every_step.safetensors"))
        let g = try f.tensor("grad.rnn.weight_hh_l1").values
        XCTAssertNil(Self.mismatch(g, g))
        XCTAssertNil(Self.mismatch(g.map { Double(Float($0) * (1 + Float.ulpOfOne)) }, g))
        var wrong = g
        wrong[7] *= 1 + 1e-4
        XCTAssertNotNil(Self.mismatch(wrong, g))
        let maxAbs = g.map(abs).max()!
        let smallest = g.indices.min { abs(g[$0]) < abs(g[$1]) }!
        wrong = g
        wrong[smallest] += 3e-6 * maxAbs  // 3x the floor's absolute tolerance
        XCTAssertNotNil(Self.mismatch(wrong, g))
        XCTAssertNotNil(Self.mismatch(g.map { $0 * -1 }, g))
        XCTAssertNotNil(Self.mismatch(g + [0], g))
    }
}
