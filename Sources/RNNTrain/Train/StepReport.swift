import Foundation
import RNN
import RNNDistributed

/// The progress line and the metrics.jsonl record of a log step, with the step, compute and
/// communication times averaged over the steps since the last one.
final class StepReport {
    let console: Console
    var metrics: MetricsLog?
    let totalSteps: Int, startStep: Int
    /// Samples per step, and time steps per sample (text: throughput in tokens).
    let globalBatch: Int, steps: Int, text: Bool
    let runStart: Double
    private var intervalStart: Double
    private var intervalSteps = 0
    private var compute = 0.0, communication = 0.0, exposed = 0.0, timed = 0
    /// Sequences of unequal lengths: a step's padding fraction and shard imbalance (see
    /// ArrayDataset.balance), averaged over the steps since the last log step.
    var balance: ((Int) -> (padding: Double, imbalance: Double)?)?
    private var padding = 0.0, imbalance = 0.0, balanced = 0

    init(console: Console, totalSteps: Int, startStep: Int, globalBatch: Int, steps: Int, text: Bool) {
        self.console = console
        self.totalSteps = totalSteps
        self.startStep = startStep
        self.globalBatch = globalBatch
        self.steps = steps
        self.text = text
        runStart = monotonicSeconds()
        intervalStart = runStart
    }

    /// A step's times (every step whose gradients were computed), and its batch's shape.
    func time(_ g: StepGradients, step: Int) {
        compute += g.compute; communication += g.reduction.communication; exposed += g.reduction.exposed
        timed += 1
        if let b = balance?(step) { padding += b.padding; imbalance += b.imbalance; balanced += 1 }
    }

    /// Communication outside the gradient step (local SGD's parameter averaging).
    func communicated(_ seconds: Double) {
        communication += seconds
        exposed += seconds
    }

    /// A step that updated the parameters.
    func updated() { intervalSteps += 1 }

    struct Line {
        var step: Int, loss: Double, gradNorm: Double, learningRate: Double
        var validation: Double?, accuracy: Double?
        var diagnostics: Diagnostics?, tensorGradNorms: [(name: String, norm: Double)] = []
        var skippedSteps: Int
    }

    /// Prints the progress line and writes the record.
    func log(_ l: Line) throws {
        let now = monotonicSeconds()
        let stepTime = (now - intervalStart) / Double(max(intervalSteps, 1))
        intervalStart = now
        intervalSteps = 0
        let perSecond = Double(globalBatch * (text ? steps : 1)) / stepTime
        var line = String(format: "step %d/%d | loss %.4f | grad norm %.4f | lr %.3g | %.1f ms/step | %.0f %@",
                          l.step, totalSteps, l.loss, l.gradNorm, l.learningRate, stepTime * 1000, perSecond, text ? "tok/s" : "samples/s")
        if let v = l.validation { line += String(format: " | val loss %.4f", v) }
        if l.validation != nil, !text, let acc = l.accuracy { line += String(format: " | val acc %.1f%%", acc * 100) }
        let shape: (padding: Double, imbalance: Double)? = balanced > 0 ? (padding / Double(balanced), imbalance / Double(balanced)) : nil
        if let shape { line += String(format: " | padding %.1f%% | imbalance %.1f%%", shape.padding * 100, shape.imbalance * 100) }
        padding = 0; imbalance = 0; balanced = 0
        // Elapsed since this process started; the ETA from this run's mean step time.
        let elapsed = now - runStart, done = l.step - startStep
        line += " | elapsed \(Console.duration(elapsed))"
        if l.step < totalSteps && done > 0 { line += " | ETA \(Console.duration(elapsed / Double(done) * Double(totalSteps - l.step)))" }
        console.info(line)
        let n = Double(max(timed, 1))
        var record: [(String, Any?)] = [("step", l.step), ("loss", l.loss), ("grad_norm", l.gradNorm), ("lr", l.learningRate),
                                        ("step_time", stepTime), ("compute_time", compute / n), ("comm_time", communication / n),
                                        ("exposed_comm_time", exposed / n), (text ? "tokens_per_s" : "samples_per_s", perSecond),
                                        ("elapsed", elapsed), ("samples_seen", l.step * globalBatch),
                                        ("val_loss", l.validation), ("val_accuracy", l.validation != nil ? l.accuracy : nil)]
        compute = 0; communication = 0; exposed = 0; timed = 0
        if l.skippedSteps > 0 { record.append(("skipped_steps", l.skippedSteps)) }
        if let shape { record += [("padding", shape.padding), ("rank_imbalance", shape.imbalance)] }
        if let d = l.diagnostics {
            console.info("  " + StepReport.describe(d))
            record.append(("diagnostics", [("grad_norms", l.tensorGradNorms.map { ($0.name, $0.norm as Any?) }),
                                           ("dh_ratio", d.dhRatio), ("dh_norms", d.dhNorms), ("saturated", d.saturated),
                                           ("near_dead", d.nearDead), ("dead_units", d.deadUnits)] as [(String, Any?)]))
        }
        try metrics?.write(record)
    }

    /// The record of a run resumed at its last step (evaluation only).
    func logFinalEvaluation(step: Int, validation: Double?) throws {
        try metrics?.write([("step", step), ("val_loss", validation), ("elapsed", monotonicSeconds() - runStart)])
    }

    /// One line: per layer the vanishing/exploding ratio and the saturation or dead-unit fraction.
    static func describe(_ d: Diagnostics) -> String {
        let layers = (0..<d.dhNorms.count).map { k -> String in
            var s = String(format: "L%d |dL/dh_0|/|dL/dh_T-1| %.3g", k, d.dhRatio[k])
            if let sat = d.saturated[k] { s += String(format: ", saturated %.1f%%", sat * 100) }
            if let nd = d.nearDead[k] { s += String(format: ", near-dead %.1f%%", nd * 100) }
            if let dead = d.deadUnits[k] { s += String(format: ", dead units %.1f%%", dead * 100) }
            return s
        }
        return "diagnostics: " + layers.joined(separator: "; ")
    }
}
