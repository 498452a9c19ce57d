import RNN
import RNNData
import RNNDistributed

/// Where a step's rows come from, and the recurrent state they start from.
protocol BatchSource: AnyObject {
    /// Fills `batch` with global rows `rows` of step `step`'s batch (steps count from 1). Returns
    /// true when it also wrote these rows' initial state into `state` (L, C, rows, H); false:
    /// the passes start from the model's own initial state.
    func fill(_ batch: inout Batch, step: Int, rows: Range<Int>, state: inout [Float]) -> Bool
    /// Whether the rows' final state is wanted after the step's passes (`keep`).
    var carriesState: Bool { get }
    /// These rows' (L, C, rows, H) final state after the step's passes.
    func keep(finalState: [Float], rows: Range<Int>)
    /// After the step's passes, on every rank alike.
    func exchange() throws
    /// The step's update was accepted.
    func accept()
    /// What a checkpoint holds of it, and reading it back.
    func checkpointTensors() -> [SafeTensors.Tensor]
    /// Before a checkpoint, on every rank: a pipeline stage's carried state covers its own layers;
    /// this makes it whole.
    func assembleStages() throws
    func restore(from file: SafeTensors.File, prefix: String) throws -> [String]
}

/// A source that carries no state between steps: nothing to keep, exchange or checkpoint.
extension BatchSource {
    var carriesState: Bool { false }
    func keep(finalState: [Float], rows: Range<Int>) {}
    func exchange() throws {}
    func accept() {}
    func checkpointTensors() -> [SafeTensors.Tensor] { [] }
    func assembleStages() throws {}
    func restore(from file: SafeTensors.File, prefix: String) throws -> [String] { [] }
}

/// Windows sampled afresh every step: global row b of step s is a function of (seed, s, b).
final class SampledWindows: BatchSource {
    let dataset: Dataset
    let globalBatch: Int
    init(_ dataset: Dataset, globalBatch: Int) {
        self.dataset = dataset
        self.globalBatch = globalBatch
    }
    func fill(_ batch: inout Batch, step: Int, rows: Range<Int>, state: inout [Float]) -> Bool {
        dataset.fillTrainingBatch(&batch, step: step - 1, globalBatch: globalBatch, rows: rows)
        return false
    }
}

/// training.stateful: the text read as `globalBatch` streams of consecutive chunks, the hidden
/// state carried from step to step. Every rank holds every stream's state (L, C, B, H); after a
/// step's passes each rank writes its rows of the next state (zeros elsewhere) and one allreduce
/// sums them (each element has one contributor, so the sum is exact on any number of ranks). The
/// next state becomes the carried one only when the update is accepted.
final class StatefulStreams: BatchSource {
    let text: TextDataset
    let comm: Communicator
    let globalBatch: Int, hidden: Int
    /// Layers and state tensors per layer (1, or 2 for the LSTM's h and c): L * C planes of (B, H).
    let layers: Int, stateTensors: Int
    var planes: Int { layers * stateTensors }
    var state: [Float]
    var next: [Float]
    /// Under a pipeline: the communicator of this replica's stages and this stage's layers.
    var stages: (comm: Communicator, layers: Range<Int>)?

    init(_ text: TextDataset, comm: Communicator, globalBatch: Int, spec: ModelSpec) {
        self.text = text
        self.comm = comm
        self.globalBatch = globalBatch
        hidden = spec.hiddenSize
        layers = spec.layers
        stateTensors = spec.cell.stateTensors
        state = [Float](repeating: 0, count: spec.layers * spec.cell.stateTensors * globalBatch * spec.hiddenSize)
        next = state
    }

    func fill(_ batch: inout Batch, step: Int, rows: Range<Int>, state rowState: inout [Float]) -> Bool {
        text.fillStreamBatch(&batch, step: step - 1, globalBatch: globalBatch, rows: rows)
        if text.streamRestarts(step: step - 1, globalBatch: globalBatch) { return false }
        let H = hidden, B = globalBatch
        for p in 0..<planes {
            for (i, b) in rows.enumerated() {
                for j in 0..<H { rowState[(p * rows.count + i) * H + j] = state[(p * B + b) * H + j] }
            }
        }
        return true
    }

    var carriesState: Bool { true }

    /// Adding 0 turns -0.0 into +0.0, so the allreduce of one contribution and zeros is exact.
    func keep(finalState: [Float], rows: Range<Int>) {
        let H = hidden, B = globalBatch
        for p in 0..<planes {
            for (i, b) in rows.enumerated() {
                for j in 0..<H { next[(p * B + b) * H + j] = finalState[(p * rows.count + i) * H + j] + 0 }
            }
        }
    }

    func exchange() throws {
        try next.withUnsafeMutableBufferPointer { try comm.allreduceSum($0) }
    }

    func accept() {
        swap(&state, &next)
        for i in next.indices { next[i] = 0 }
    }

    /// This stage's layers kept, the others zeroed, summed over the stages (exact).
    func assembleStages() throws {
        guard let (pipe, own) = stages else { return }
        let plane = stateTensors * globalBatch * hidden  // one layer's (C, B, H)
        for i in 0..<(own.lowerBound * plane) { state[i] = 0 }
        for i in (own.upperBound * plane)..<state.count { state[i] = 0 }
        try state.withUnsafeMutableBufferPointer { try pipe.allreduceSum($0) }
    }

    func checkpointTensors() -> [SafeTensors.Tensor] {
        [SafeTensors.Tensor(name: "stream.state", shape: tensorShape, values: state)]
    }

    func restore(from file: SafeTensors.File, prefix: String) throws -> [String] {
        let buffer = Buffer<Float>(count: state.count)
        try copyTensor(file, "stream.state", shape: tensorShape, into: buffer, at: 0, prefix: prefix + " (training.stateful)")
        state = buffer.array
        return ["stream.state"]
    }

    /// (L, C, B, H) as stored in checkpoints.
    var tensorShape: [Int] { [layers, stateTensors, globalBatch, hidden] }
}
