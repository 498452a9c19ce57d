import Foundation

/// Learning-rate schedules. `learningRate(step:)` is the rate used by the update of 0-based step
/// `step` (PyTorch: the rate in effect after `step` calls of scheduler.step()). All but
/// reduce-on-plateau are pure functions of the step, so a resumed run continues them exactly.
public enum Schedule: Equatable, Sendable {
    case constant
    /// StepLR: base * gamma^floor(step / stepSize).
    case step(stepSize: Int, gamma: Double)
    /// ExponentialLR: base * gamma^step.
    case exponential(gamma: Double)
    /// Linear warmup from base/warmup to base over `warmup` steps, then cosine annealing to
    /// minLR at `total` steps (CosineAnnealingLR after a LinearLR warmup).
    case cosine(warmup: Int, total: Int, minLR: Double)
    /// CyclicLR mode "triangular": between base and maxLR, stepSizeUp steps up then down.
    case triangular(maxLR: Double, stepSizeUp: Int)
    /// ReduceLROnPlateau (mode min, relative threshold): multiply by factor when the validation
    /// loss has not improved for more than `patience` evaluations.
    case plateau(factor: Double, patience: Int, threshold: Double, cooldown: Int, minLR: Double)

    public static let names = ["constant", "step", "exponential", "cosine", "triangular", "plateau"]
}

/// A schedule with its base rate and (for plateau) its state.
public struct LearningRateSchedule: Sendable {
    public let base: Double
    public let schedule: Schedule
    // ReduceLROnPlateau state.
    public private(set) var plateauRate: Double
    public private(set) var best = Double.infinity
    public private(set) var badEvaluations = 0
    public private(set) var cooldownLeft = 0

    public init(base: Double, schedule: Schedule) {
        self.base = base
        self.schedule = schedule
        plateauRate = base
    }

    public func learningRate(step: Int) -> Double {
        switch schedule {
        case .constant:
            return base
        case .step(let size, let gamma):
            return base * pow(gamma, Double(step / size))
        case .exponential(let gamma):
            return base * pow(gamma, Double(step))
        case .cosine(let warmup, let total, let minLR):
            if step < warmup { return base * Double(step + 1) / Double(warmup) }
            let span = max(total - warmup, 1)
            let progress = min(Double(step - warmup) / Double(span), 1)
            return minLR + (base - minLR) * (1 + cos(Double.pi * progress)) / 2
        case .triangular(let maxLR, let up):
            let cycle = (1 + Double(step) / Double(2 * up)).rounded(.down)
            let x = abs(Double(step) / Double(up) - 2 * cycle + 1)
            return base + (maxLR - base) * max(0, 1 - x)
        case .plateau:
            return plateauRate
        }
    }

    /// Feeds one validation loss (identical on every rank) to reduce-on-plateau; no effect on
    /// the other schedules. Returns true when the rate was reduced.
    @discardableResult
    public mutating func observe(validationLoss v: Double) -> Bool {
        guard case .plateau(let factor, let patience, let threshold, let cooldown, let minLR) = schedule else { return false }
        if v < best * (1 - threshold) {
            best = v
            badEvaluations = 0
        } else {
            badEvaluations += 1
        }
        if cooldownLeft > 0 {
            cooldownLeft -= 1
            badEvaluations = 0
        }
        if badEvaluations > patience {
            let new = max(plateauRate * factor, minLR)
            let reduced = plateauRate - new > 1e-8  // torch's eps
            if reduced { plateauRate = new }
            cooldownLeft = cooldown
            badEvaluations = 0
            return reduced
        }
        return false
    }

    /// Restores reduce-on-plateau's state (for resuming).
    public mutating func restore(rate: Double, best: Double, badEvaluations: Int, cooldownLeft: Int) {
        plateauRate = rate
        self.best = best
        self.badEvaluations = badEvaluations
        self.cooldownLeft = cooldownLeft
    }
}
