import Foundation
import RNN

/// The memory a training run needs per rank, computed from the config before anything is
/// allocated, so that a model that cannot fit is a one-line error instead of a trap.
///
/// Float32 throughout. P parameters; rows = ceil(B / D) per rank (D = N / S replicas of an
/// S-stage pipeline; D = N without one); T steps; G gates; the largest stage's layers and its
/// tensors, P_s (P without a pipeline).
/// - model state: the stage's parameters, gradients and optimizer state (0-3 buffers):
///   (2 + slots) P_s; a checkpoint's encoded copy (tensors and file bytes), 2 P; under a
///   pipeline also the whole model and optimizer state that rank 0 gathers for a checkpoint,
///   (1 + slots) P (the other ranks gather the whole parameters for evaluation, P); and each of
///   the stage's layers' W_hh packed for the recurrent products (RecurrentProducts.swift),
///   2 G H^2 floats per layer, and W_head packed for the head's input gradient, 2 O D H; and
///   for one-hot token input (V <= 4096) the transposed copy of W_ih, V G H floats (Network's
///   token table);
/// - activations kept for BPTT, per layer of the stage (T, rows, 3H + 3GH): h, c or GRU's n,
///   the gates, layer or batch norm's normalized values; and the backward pass's dL/dh and gate
///   gradients of two layers, (T, rows, 2H + 2GH), or of every layer of the stage when the
///   sweeps run in several chunks (parallel.chunk_steps);
/// - the head's outputs and their gradient, (T, rows, O) twice.
/// It is an estimate that errs high (every optional buffer counted); the measured fixed memory
/// of a process (about 30 MB, BENCHMARKS.md) is added.
public struct MemoryEstimate {
    public let parameters: Int
    public let modelBytes: Double
    public let activationBytes: Double
    public var totalBytes: Double { modelBytes + activationBytes + 30e6 }

    public init(spec: ModelSpec, config: TrainConfig, ranks: Int, steps T: Int) {
        let layout = ParameterLayout(spec: spec)
        let P = layout.count
        parameters = P
        let S = config.parallel.pipelineStages, replicas = max(1, ranks / S)
        let split = PipelineLayout.split(config.parallel, spec: spec, steps: T)
        let stageTensors = split.map { Network<Float>.parameterRange(layout, spec: spec, layers: $0).count }.max()!
        let stageUnits = split.map(\.count).max()! * spec.directions
        let chunked = Network<Float>.chunks(steps: T, chunkSteps: config.parallel.chunkSteps) > 1
        let slots: Int
        switch config.training.optimizer.kind {
        case .adam, .adamw: slots = 2
        case .rmsprop: slots = 3  // square average, momentum, centered average
        case .adagrad, .sgd: slots = 1  // sum of squares; momentum
        }
        let rows = Double((config.training.globalBatchSize + replicas - 1) / replicas)
        let H = Double(spec.hiddenSize), G = Double(spec.cell.gates), O = Double(spec.outputSize)
        modelBytes = 4 * (Double(2 + slots) * Double(stageTensors) + 2 * Double(P) + (S > 1 ? Double((1 + slots) * P) : 0))
            + 4 * 2 * Double(stageUnits) * G * H * H + 4 * 2 * O * Double(spec.layerOutputWidth)
            + 4 * Double(Network<Float>.tokenTableScalars(spec))
        let perLayer = 3 * H + 3 * G * H
        let backward = (chunked ? Double(stageUnits) : 2) * (H + G * H)
        // Per unit (a layer in one direction); bidirectional layers also keep their 2H outputs.
        let concatenated = spec.bidirectional ? Double(spec.layers) * 2 * H * 3 : 0
        activationBytes = 4 * Double(T) * rows * (Double(stageUnits) * perLayer + backward + 2 * O + concatenated)
    }

    /// Bytes this node can still give, shared by its `localRanks` ranks: MemAvailable, or the
    /// cgroup's limit less its usage when that is smaller (a Slurm job's or a container's limit).
    public static func availablePerRank(localRanks: Int) -> Double? {
        var available: Double?
        if let info = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8),
           let line = info.split(separator: "\n").first(where: { $0.hasPrefix("MemAvailable:") }),
           let kb = Double(line.split(separator: " ").dropFirst().first ?? "") {
            available = kb * 1024
        }
        if let maxText = try? String(contentsOfFile: "/sys/fs/cgroup/memory.max", encoding: .utf8),
           let limit = Double(maxText.trimmingCharacters(in: .whitespacesAndNewlines)),
           let usedText = try? String(contentsOfFile: "/sys/fs/cgroup/memory.current", encoding: .utf8),
           let used = Double(usedText.trimmingCharacters(in: .whitespacesAndNewlines)) {
            available = min(available ?? .infinity, max(0, limit - used))
        }
        return available.map { $0 / Double(max(1, localRanks)) }
    }

    /// Throws the one-line error when the run does not fit.
    public func check(localRanks: Int, source: String) throws {
        guard let free = MemoryEstimate.availablePerRank(localRanks: localRanks), totalBytes > free else { return }
        func gb(_ b: Double) -> String { String(format: "%.1f GB", b / 1e9) }
        throw RNNDPError("\(source): this run needs about \(gb(totalBytes)) per rank (\(parameters) parameters with gradients and optimizer state: \(gb(modelBytes)); "
                         + "activations: \(gb(activationBytes))) but \(gb(free)) is available per rank (\(localRanks) on this node): "
                         + "lower model.hidden_size or model.layers, or training.global_batch_size or training.sequence_length")
    }
}
