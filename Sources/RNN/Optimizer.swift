/// Optimizers with PyTorch's exact update rules and defaults (torch.optim, the single-tensor
/// "for-loop" implementation), over the flat parameter and gradient buffers. Each optimizer is one
/// loop over the buffer; its state is a list of named buffers of the same layout (for checkpoints).
///
/// `step` reads the gradient (it may scale it in place for weight decay) and the learning rate of
/// this step, which the schedule supplies.
import Foundation

public protocol Optimizer<S>: AnyObject {
    associatedtype S: RNNScalar
    /// Number of steps taken so far.
    var steps: Int { get set }
    /// Named state buffers (e.g. "exp_avg"), each of the parameter layout.
    var state: [(name: String, buffer: Buffer<S>)] { get }
    func step(parameters: Buffer<S>, gradients: Buffer<S>, learningRate: Double)
}

/// Hyper-parameters of every optimizer; unused ones are ignored by the others.
public struct OptimizerSettings: Equatable, Sendable {
    public enum Kind: String, CaseIterable, Sendable { case sgd, adam, adamw, rmsprop, adagrad }
    public var kind: Kind
    public var momentum: Double = 0
    public var nesterov = false
    public var dampening: Double = 0
    public var weightDecay: Double = 0
    public var beta1: Double = 0.9
    public var beta2: Double = 0.999
    public var eps: Double? = nil  // nil: the optimizer's PyTorch default
    public var alpha: Double = 0.99  // RMSprop smoothing
    public var centered = false  // RMSprop
    public var lrDecay: Double = 0  // Adagrad
    public var initialAccumulator: Double = 0  // Adagrad

    public init(kind: Kind) { self.kind = kind }

    /// PyTorch's default learning rate of each optimizer (SGD: 1e-3 since torch 2.2).
    public static func defaultLearningRate(_ kind: Kind) -> Double {
        switch kind {
        case .sgd, .adam, .adamw: return 1e-3
        case .rmsprop, .adagrad: return 1e-2
        }
    }
    /// PyTorch's default weight decay (AdamW: 1e-2, others 0).
    public static func defaultWeightDecay(_ kind: Kind) -> Double { kind == .adamw ? 1e-2 : 0 }
    /// PyTorch's default eps (Adagrad 1e-10, others 1e-8).
    public var resolvedEps: Double { eps ?? (kind == .adagrad ? 1e-10 : 1e-8) }
}

/// Builds the optimizer the settings describe.
public func makeOptimizer<S: RNNScalar>(_ s: OptimizerSettings, count: Int, as: S.Type = S.self) -> any Optimizer<S> {
    switch s.kind {
    case .sgd: return SGD<S>(count: count, momentum: S(s.momentum), dampening: S(s.dampening),
                             weightDecay: S(s.weightDecay), nesterov: s.nesterov)
    case .adam, .adamw: return Adam<S>(count: count, beta1: S(s.beta1), beta2: S(s.beta2), eps: S(s.resolvedEps),
                                       weightDecay: S(s.weightDecay), decoupled: s.kind == .adamw)
    case .rmsprop: return RMSprop<S>(count: count, alpha: S(s.alpha), eps: S(s.resolvedEps), weightDecay: S(s.weightDecay),
                                     momentum: S(s.momentum), centered: s.centered)
    case .adagrad: return Adagrad<S>(count: count, lrDecay: S(s.lrDecay), weightDecay: S(s.weightDecay),
                                     initialAccumulator: S(s.initialAccumulator), eps: S(s.resolvedEps))
    }
}

/// torch.optim.SGD:
///   g <- g + wd p
///   b <- g (first step) or momentum b + (1 - dampening) g
///   g <- g + momentum b (Nesterov) or b
///   p <- p - lr g
public final class SGD<S: RNNScalar>: Optimizer {
    public let momentum: S, dampening: S, weightDecay: S
    public let nesterov: Bool
    public let momentumBuffer: Buffer<S>
    public var steps = 0

    public init(count: Int, momentum: S = 0, dampening: S = 0, weightDecay: S = 0, nesterov: Bool = false) {
        self.momentum = momentum
        self.dampening = dampening
        self.weightDecay = weightDecay
        self.nesterov = nesterov
        momentumBuffer = Buffer(count: momentum != 0 ? count : 0)
    }

    public var state: [(name: String, buffer: Buffer<S>)] { momentum != 0 ? [("momentum_buffer", momentumBuffer)] : [] }

    public func step(parameters: Buffer<S>, gradients: Buffer<S>, learningRate lrD: Double) {
        let lr = S(lrD)
        let n = parameters.count
        let p = parameters.pointer, g = gradients.pointer
        if weightDecay != 0 { S.axpy(n: n, alpha: weightDecay, x: p, y: g) }
        if momentum != 0 {
            let b = momentumBuffer.pointer
            let m = momentum, d = 1 - dampening
            if steps == 0 { b.update(from: g, count: n) } else { for i in 0..<n { b[i] = m * b[i] + d * g[i] } }
            if nesterov { S.axpy(n: n, alpha: m, x: b, y: g) } else { g.update(from: b, count: n) }
        }
        S.axpy(n: n, alpha: -lr, x: g, y: p)
        steps += 1
    }
}

/// The per-step coefficients of Adam's update (Kernels.adamUpdate): w1 = 1 - beta1, b2 = beta2,
/// w2 = 1 - beta2, eps, bc2Sqrt = sqrt(1 - beta2^t) and stepSize = lr / (1 - beta1^t).
public struct AdamCoefficients<S: BinaryFloatingPoint> {
    public var w1, b2, w2, eps, bc2Sqrt, stepSize: S
    public init(w1: S, b2: S, w2: S, eps: S, bc2Sqrt: S, stepSize: S) {
        (self.w1, self.b2, self.w2, self.eps, self.bc2Sqrt, self.stepSize) = (w1, b2, w2, eps, bc2Sqrt, stepSize)
    }
}

/// torch.optim.Adam and AdamW:
///   AdamW: p <- p (1 - lr wd);  Adam: g <- g + wd p
///   m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
///   p <- p - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
public final class Adam<S: RNNScalar>: Optimizer {
    public let beta1: S, beta2: S, eps: S, weightDecay: S
    public let decoupled: Bool
    public let expAvg: Buffer<S>, expAvgSq: Buffer<S>
    public var steps = 0

    public init(count: Int, beta1: S = 0.9, beta2: S = 0.999, eps: S = 1e-8, weightDecay: S = 0, decoupled: Bool = false) {
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.weightDecay = weightDecay
        self.decoupled = decoupled
        expAvg = Buffer(count: count)
        expAvgSq = Buffer(count: count)
    }

    public var state: [(name: String, buffer: Buffer<S>)] { [("exp_avg", expAvg), ("exp_avg_sq", expAvgSq)] }

    public func step(parameters: Buffer<S>, gradients: Buffer<S>, learningRate lrD: Double) {
        let lr = S(lrD)
        steps += 1
        let n = parameters.count
        let p = parameters.pointer, g = gradients.pointer, m = expAvg.pointer, v = expAvgSq.pointer
        if weightDecay != 0 {
            if decoupled { S.scale(n: n, alpha: 1 - lr * weightDecay, x: p) } else { S.axpy(n: n, alpha: weightDecay, x: p, y: g) }
        }
        // As torch: the bias corrections and the step size in double, applied in S.
        let t = Double(steps)
        let bc1 = 1 - pow(Double(beta1), t), bc2 = 1 - pow(Double(beta2), t)
        let stepSize = S(lrD / bc1)
        let bc2Sqrt = S(bc2.squareRoot())
        S.adamUpdate(n, p: p, g: g, m: m, v: v,
                     AdamCoefficients(w1: 1 - beta1, b2: beta2, w2: 1 - beta2, eps: eps, bc2Sqrt: bc2Sqrt, stepSize: stepSize))
    }
}

/// torch.optim.RMSprop:
///   g <- g + wd p;  v <- a v + (1 - a) g^2
///   centered: ga <- a ga + (1 - a) g;  avg = sqrt(v - ga^2) + eps,  else avg = sqrt(v) + eps
///   momentum > 0: b <- momentum b + g / avg;  p <- p - lr b,  else p <- p - lr g / avg
public final class RMSprop<S: RNNScalar>: Optimizer {
    public let alpha: S, eps: S, weightDecay: S, momentum: S
    public let centered: Bool
    public let squareAvg: Buffer<S>, gradAvg: Buffer<S>, momentumBuffer: Buffer<S>
    public var steps = 0

    public init(count: Int, alpha: S = 0.99, eps: S = 1e-8, weightDecay: S = 0, momentum: S = 0, centered: Bool = false) {
        self.alpha = alpha
        self.eps = eps
        self.weightDecay = weightDecay
        self.momentum = momentum
        self.centered = centered
        squareAvg = Buffer(count: count)
        gradAvg = Buffer(count: centered ? count : 0)
        momentumBuffer = Buffer(count: momentum != 0 ? count : 0)
    }

    public var state: [(name: String, buffer: Buffer<S>)] {
        var s: [(name: String, buffer: Buffer<S>)] = [("square_avg", squareAvg)]
        if centered { s.append(("grad_avg", gradAvg)) }
        if momentum != 0 { s.append(("momentum_buffer", momentumBuffer)) }
        return s
    }

    public func step(parameters: Buffer<S>, gradients: Buffer<S>, learningRate lrD: Double) {
        let lr = S(lrD)
        steps += 1
        let n = parameters.count
        let p = parameters.pointer, g = gradients.pointer, v = squareAvg.pointer
        if weightDecay != 0 { S.axpy(n: n, alpha: weightDecay, x: p, y: g) }
        let a = alpha, e = eps, mom = momentum
        let ga = gradAvg.pointer, b = momentumBuffer.pointer
        for i in 0..<n {
            let gi = g[i]
            v[i] = a * v[i] + (1 - a) * gi * gi
            var avg: S
            if centered {
                ga[i] = a * ga[i] + (1 - a) * gi
                avg = (v[i] - ga[i] * ga[i]).squareRoot() + e
            } else {
                avg = v[i].squareRoot() + e
            }
            if mom != 0 {
                b[i] = mom * b[i] + gi / avg
                p[i] -= lr * b[i]
            } else {
                p[i] -= lr * gi / avg
            }
        }
    }
}

/// torch.optim.Adagrad:
///   g <- g + wd p;  clr = lr / (1 + (t - 1) lr_decay);  s <- s + g^2;  p <- p - clr g / (sqrt(s) + eps)
public final class Adagrad<S: RNNScalar>: Optimizer {
    public let lrDecay: S, weightDecay: S, eps: S
    public let sum: Buffer<S>
    public var steps = 0

    public init(count: Int, lrDecay: S = 0, weightDecay: S = 0, initialAccumulator: S = 0, eps: S = 1e-10) {
        self.lrDecay = lrDecay
        self.weightDecay = weightDecay
        self.eps = eps
        sum = Buffer(count: count)
        if initialAccumulator != 0 { sum.pointer.update(repeating: initialAccumulator, count: count) }
    }

    public var state: [(name: String, buffer: Buffer<S>)] { [("sum", sum)] }

    public func step(parameters: Buffer<S>, gradients: Buffer<S>, learningRate lrD: Double) {
        steps += 1
        let n = parameters.count
        let p = parameters.pointer, g = gradients.pointer, s = sum.pointer
        if weightDecay != 0 { S.axpy(n: n, alpha: weightDecay, x: p, y: g) }
        let clr = S(lrD / (1 + Double(steps - 1) * Double(lrDecay)))
        let e = eps
        for i in 0..<n {
            s[i] += g[i] * g[i]
            p[i] -= clr * g[i] / (s[i].squareRoot() + e)
        }
    }
}

/// Gradient clipping by global norm (torch.nn.utils.clip_grad_norm_): when the L2 norm of the whole
/// gradient exceeds maxNorm, scale it by maxNorm / (norm + 1e-6). Returns the norm before clipping.
@discardableResult
public func clipGradientNorm<S: RNNScalar>(_ gradients: Buffer<S>, maxNorm: Double?) -> Double {
    let norm = S.sumOfSquares(gradients.pointer, gradients.count).squareRoot()
    if let maxNorm, maxNorm > 0, norm > maxNorm {
        S.scale(n: gradients.count, alpha: S(maxNorm / (norm + 1e-6)), x: gradients.pointer)
    }
    return norm
}

/// The same with the norm already known (the whole model's, from per-tensor sums of squares).
public func clipGradientNorm<S: RNNScalar>(_ gradients: Buffer<S>, maxNorm: Double?, norm: Double) {
    if let maxNorm, maxNorm > 0, norm > maxNorm {
        S.scale(n: gradients.count, alpha: S(maxNorm / (norm + 1e-6)), x: gradients.pointer)
    }
}

/// Gradient clipping by value (torch.nn.utils.clip_grad_value_): clamp every element to [-c, c].
public func clipGradientValue<S: RNNScalar>(_ gradients: Buffer<S>, clip: Double) {
    let c = S(clip), g = gradients.pointer
    for i in 0..<gradients.count { g[i] = min(max(g[i], -c), c) }
}
