// Elementwise kernels, written once for any scalar and instantiated for Float and Double in
// Scalar.swift. Index math uses wrapping operators (&+, &*) so the loops carry no overflow checks
// and vectorize.

enum Kernels {
    @inline(__always)
    static func sigmoid<S: BinaryFloatingPoint & ElementaryFunctions>(_ x: S) -> S {
        // Written so that exp never overflows: for x < 0, e^x / (1 + e^x).
        if x >= 0 { return 1 / (1 + S.expf(-x)) }
        let e = S.expf(x)
        return e / (1 + e)
    }

    static func activationForward<S: BinaryFloatingPoint & ElementaryFunctions>(_ act: Activation, _ z: UnsafeMutablePointer<S>, _ n: Int) {
        switch act {
        case .tanh: for i in 0..<n { z[i] = S.tanhf(z[i]) }
        case .sigmoid: for i in 0..<n { z[i] = sigmoid(z[i]) }
        case .relu: for i in 0..<n { z[i] = z[i] > 0 ? z[i] : 0 }
        }
    }

    /// d <- d * act'(z) with act' expressed through y = act(z):
    /// tanh' = 1 - y^2, sigmoid' = y (1 - y), relu' = [y > 0].
    static func activationBackward<S: BinaryFloatingPoint & ElementaryFunctions>(_ act: Activation, _ y: UnsafePointer<S>, _ d: UnsafeMutablePointer<S>, _ n: Int) {
        switch act {
        case .tanh: for i in 0..<n { d[i] *= 1 - y[i] * y[i] }
        case .sigmoid: for i in 0..<n { d[i] *= y[i] * (1 - y[i]) }
        case .relu: for i in 0..<n { d[i] = y[i] > 0 ? d[i] : 0 }
        }
    }

    static func addBiasRows<S: BinaryFloatingPoint>(_ p: UnsafeMutablePointer<S>, _ rows: Int, _ cols: Int, _ b1: UnsafePointer<S>, _ b2: UnsafePointer<S>?) {
        for r in 0..<rows {
            let row = p + r &* cols
            if let b2 {
                for j in 0..<cols { row[j] += b1[j] + b2[j] }
            } else {
                for j in 0..<cols { row[j] += b1[j] }
            }
        }
    }

    static func sumRows<S: BinaryFloatingPoint>(_ p: UnsafePointer<S>, _ rows: Int, _ cols: Int, _ out: UnsafeMutablePointer<S>) {
        for r in 0..<rows {
            let row = p + r &* cols
            for j in 0..<cols { out[j] += row[j] }
        }
    }

    static func gatherColumns<S: BinaryFloatingPoint>(_ w: UnsafePointer<S>, _ ldw: Int, _ cols: Int, _ tokens: UnsafePointer<Int32>, _ rows: Int, _ out: UnsafeMutablePointer<S>) {
        for r in 0..<rows {
            let tok = Int(tokens[r])
            let row = out + r &* cols
            for j in 0..<cols { row[j] += w[j &* ldw &+ tok] }
        }
    }

    static func scatterAddColumns<S: BinaryFloatingPoint>(_ d: UnsafePointer<S>, _ rows: Int, _ cols: Int, _ tokens: UnsafePointer<Int32>, _ dw: UnsafeMutablePointer<S>, _ ldw: Int) {
        for r in 0..<rows {
            let tok = Int(tokens[r])
            let row = d + r &* cols
            for j in 0..<cols { dw[j &* ldw &+ tok] += row[j] }
        }
    }

    static func softmaxCrossEntropy<S: BinaryFloatingPoint & ElementaryFunctions>(_ logits: UnsafeMutablePointer<S>, _ rows: Int, _ classes: Int, _ targets: UnsafePointer<Int32>, _ scale: S) -> (loss: Double, correct: Int) {
        var loss = 0.0
        var correct = 0
        for r in 0..<rows {
            let z = logits + r &* classes
            var mx = z[0]
            var arg = 0
            for j in 1..<max(classes, 1) where z[j] > mx { mx = z[j]; arg = j }
            var sum: S = 0
            for j in 0..<classes {
                let e = S.expf(z[j] - mx)
                z[j] = e
                sum += e
            }
            let t = Int(targets[r])
            if arg == t { correct += 1 }
            // -log p_t = log(sum) - (z_t - max); z[t] now holds exp(z_t - max).
            loss += Double(S.logf(sum)) - Double(S.logf(z[t]))
            let inv = scale / sum
            for j in 0..<classes { z[j] *= inv }
            z[t] -= scale
        }
        return (loss, correct)
    }

    static func meanSquaredError<S: BinaryFloatingPoint>(_ y: UnsafeMutablePointer<S>, _ t: UnsafePointer<Float>, _ rows: Int, _ width: Int, _ scale: S) -> Double {
        var loss = 0.0
        let w = S(width)
        for r in 0..<rows {
            var rowLoss = 0.0
            for o in 0..<width {
                let i = r &* width &+ o
                let diff = y[i] - S(t[i])
                rowLoss += Double(diff) * Double(diff)
                y[i] = scale * 2 * diff / w
            }
            loss += rowLoss / Double(width)
        }
        return loss
    }

    static func sumOfSquares<S: BinaryFloatingPoint>(_ x: UnsafePointer<S>, _ n: Int) -> Double {
        var s = 0.0
        for i in 0..<n { let v = Double(x[i]); s += v * v }
        return s
    }

    static func allFinite<S: BinaryFloatingPoint>(_ x: UnsafePointer<S>, _ n: Int) -> Bool {
        // A sum of x * 0 is NaN exactly when some x is infinite or NaN; one branch at the end.
        var acc: S = 0
        for i in 0..<n { acc += x[i] * 0 }
        return acc == 0
    }
}
