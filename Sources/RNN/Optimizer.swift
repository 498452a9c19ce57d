/// SGD with optional momentum, PyTorch's update rule (torch.optim.SGD, dampening 0, no Nesterov):
///   v <- momentum * v + g   (v = g on the first step)
///   p <- p - lr * v
/// One loop over the flat buffers; the state is one buffer of the same layout.
public final class SGD<S: RNNScalar> {
    public var learningRate: S
    public let momentum: S
    /// Momentum buffer (layout.count), empty until the first step when momentum is 0.
    public let velocity: Buffer<S>
    public private(set) var steps = 0

    public init(count: Int, learningRate: S, momentum: S = 0) {
        self.learningRate = learningRate
        self.momentum = momentum
        velocity = Buffer(count: momentum != 0 ? count : 0)
    }

    public func step(parameters: Buffer<S>, gradients: Buffer<S>) {
        precondition(parameters.count == gradients.count)
        let n = parameters.count
        let p = parameters.pointer, g = gradients.pointer
        if momentum != 0 {
            let v = velocity.pointer
            if steps == 0 {
                v.update(from: g, count: n)
            } else {
                let m = momentum
                for i in 0..<n { v[i] = m * v[i] + g[i] }
            }
            S.axpy(n: n, alpha: -learningRate, x: v, y: p)
        } else {
            S.axpy(n: n, alpha: -learningRate, x: g, y: p)
        }
        steps += 1
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
