import RNN

/// training.on_nonfinite: what a step with a non-finite loss or gradient does. Every rank holds
/// the same reduced values, so every rank decides the same.
///   stop  checkpoint the last good state (the step before) and end the job
///   skip  leave the parameters as they were, up to max_skipped steps in a row
/// Batch norm's running statistics move in every forward pass; a rejected step must not leave
/// them changed (they may hold the NaN too), so they are saved before each step.
final class NonFiniteGuard {
    let network: Network<Float>
    let skip: Bool
    let maxSkipped: Int
    /// Updates skipped over the run, and in a row (both saved in checkpoints).
    var skippedSteps = 0
    var skippedInARow = 0
    private let runningBefore: Buffer<Float>?
    let console: Console

    init(network: Network<Float>, skip: Bool, maxSkipped: Int, console: Console) {
        self.network = network
        self.skip = skip
        self.maxSkipped = maxSkipped
        self.console = console
        runningBefore = network.spec.batchNorm ? Buffer(count: network.runningStatistics.count) : nil
    }

    /// Before the step's forward passes.
    func snapshot() {
        runningBefore?.copy(from: network.runningStatistics)
    }

    /// True: the update goes ahead. False: it is skipped. Throws the stop, after
    /// `saveLastGood` (the checkpoint of the step before) returned its path.
    func admit(step: Int, gradients g: StepGradients, saveLastGood: () throws -> String) throws -> Bool {
        let loss = g.meanLoss
        if loss.isFinite && g.finite {
            skippedInARow = 0
            return true
        }
        let bad = nonFiniteTensors()
        if let saved = runningBefore { network.runningStatistics.copy(from: saved) }
        if skip && skippedInARow + 1 < maxSkipped {
            skippedInARow += 1
            skippedSteps += 1
            console.warn("step \(step): non-finite loss (\(loss)) or gradient in \(bad.joined(separator: ", ")): update skipped (\(skippedInARow) in a row, \(skippedSteps) in all)")
            return false
        }
        let saved = try saveLastGood()
        let why = skip ? "\(maxSkipped) steps in a row had" : "step \(step) has"
        throw RNNDPError("\(why) a non-finite loss (\(loss)) or gradient (in \(bad.joined(separator: ", "))); the last good state (step \(step - 1)) is in \(saved); lower training.optimizer.learning_rate or set training.clip_norm",
                         exitCode: RNNDPError.runtimeFailure, collective: true)
    }

    /// Names of the gradient tensors holding a NaN or an infinity.
    func nonFiniteTensors() -> [String] {
        let g = network.gradients
        let bad = network.stageViews.filter { !Float.allFinite(g.pointer + ($0.offset - network.stageBase), $0.count) }.map(\.name)
        return bad.isEmpty ? ["the loss only"] : bad
    }
}
