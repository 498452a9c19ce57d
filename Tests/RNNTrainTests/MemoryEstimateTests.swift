import XCTest
@testable import RNN
@testable import RNNTrain

/// The memory estimate errs high: for a real network after a training step, the parameters,
/// gradients, Adam's two slots, the packed W_hh and W_head and every workspace the network measured
/// (`workspaceScalars`, which includes one-hot input's token table) fit inside the estimate.
final class MemoryEstimateTests: XCTestCase {
    func testTheEstimateCoversWhatANetworkAllocates() throws {
        let T = 12, B = 8
        for cell in [CellKind.lstm, .gru, .rnn] {
            for vocabulary in [65, 5000] {  // with the token table and without (V > 4096)
                let spec = ModelSpec(cell: cell, input: .tokens(vocabulary: vocabulary), hiddenSize: 24, layers: 2,
                                     outputSize: vocabulary, loss: .crossEntropy)
                // The estimate takes the model from `spec`; the config gives batch, steps and optimizer.
                let yaml = "data: {kind: text, path: x.txt}\nmodel: {cell: lstm}\ntraining: {global_batch_size: \(B), sequence_length: \(T), optimizer: {name: adam}}\n"
                let config = try ConfigLoader.parse(yaml: yaml, name: "m.yaml")
                let estimate = MemoryEstimate(spec: spec, config: config, ranks: 1, steps: T)
                let net = Network<Float>(spec: spec)
                net.initializeParameters(seed: 1)
                var rng = Xoshiro256(seed: 2)
                var batch = Batch(batchSize: B, steps: T)
                batch.tokens = (0..<(T * B)).map { _ in Int32(rng.nextInt(below: vocabulary)) }
                batch.targetClasses = (0..<(T * B)).map { _ in Int32(rng.nextInt(below: vocabulary)) }
                net.gradients.zero()
                net.lossAndGradient(batch)
                let P = Double(net.layout.count), G = Double(cell.gates), H = 24.0
                let measured = 4 * (4 * P + Double(net.workspaceScalars) + 2 * 2 * G * H * H + 2 * Double(vocabulary) * H)
                XCTAssertGreaterThanOrEqual(estimate.modelBytes + estimate.activationBytes, measured,
                                            "\(cell) V=\(vocabulary): estimate \(estimate.modelBytes + estimate.activationBytes) < measured \(measured)")
                let table = Double(Network<Float>.tokenTableScalars(spec))
                XCTAssertEqual(table, vocabulary <= 4096 ? Double(vocabulary) * G * H : 0)
            }
        }
    }
}
