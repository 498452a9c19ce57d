// Elementwise kernels, written once for any scalar and instantiated for Float and Double in
// Scalar.swift. Index math uses wrapping operators (&+, &*) so the loops carry no overflow checks
// and vectorize.

enum Kernels {
    @inline(__always) static func sigmoid<S: BinaryFloatingPoint & ElementaryFunctions>(_ x: S) -> S {
        // Written so that exp never overflows: for x < 0, e^x / (1 + e^x).
        if x >= 0 { return 1 / (1 + S.expf(-x)) }
        let e = S.expf(x)
        return e / (1 + e)
    }

    @inline(__always) static func activationForward<S: BinaryFloatingPoint & ElementaryFunctions>(_ act: Activation, _ slope: S, _ z: UnsafeMutablePointer<S>, _ n: Int) {
        switch act {
        case .tanh: for i in 0..<n { z[i] = S.tanhf(z[i]) }
        case .sigmoid: for i in 0..<n { z[i] = sigmoid(z[i]) }
        case .relu: for i in 0..<n { z[i] = z[i] > 0 ? z[i] : 0 }
        case .leakyRelu: for i in 0..<n { z[i] = z[i] > 0 ? z[i] : slope * z[i] }
        }
    }

    /// d <- d * act'(z) with act' expressed through y = act(z):
    /// tanh' = 1 - y^2, sigmoid' = y (1 - y), relu' = [y > 0], leaky relu' = [y > 0] + slope [y <= 0]
    /// (for slope > 0 the sign of y is the sign of z).
    @inline(__always) static func activationBackward<S: BinaryFloatingPoint & ElementaryFunctions>(_ act: Activation, _ slope: S, _ y: UnsafePointer<S>, _ d: UnsafeMutablePointer<S>, _ n: Int) {
        switch act {
        case .tanh: for i in 0..<n { d[i] *= 1 - y[i] * y[i] }
        case .sigmoid: for i in 0..<n { d[i] *= y[i] * (1 - y[i]) }
        case .relu: for i in 0..<n { d[i] = y[i] > 0 ? d[i] : 0 }
        case .leakyRelu: for i in 0..<n { d[i] = y[i] > 0 ? d[i] : slope * d[i] }
        }
    }

    /// One LSTM step (PyTorch's nn.LSTM) for `rows` samples of width H. On entry `gates` (B, 4H)
    /// holds the pre-activations [i | f | g | o]; on exit their activations
    /// i = sigmoid, f = sigmoid, g = tanh, o = sigmoid. Then c = f * cPrev + i * g, h = o * tanh(c).
    @inline(__always) static func lstmForward<S: BinaryFloatingPoint & ElementaryFunctions>(_ gates: UnsafeMutablePointer<S>, _ cPrev: UnsafePointer<S>, _ c: UnsafeMutablePointer<S>, _ h: UnsafeMutablePointer<S>, _ rows: Int, _ H: Int) {
        for b in 0..<rows {
            let z = gates + b &* 4 &* H
            let cp = cPrev + b &* H, cb = c + b &* H, hb = h + b &* H
            for j in 0..<H {
                let i = sigmoid(z[j]), f = sigmoid(z[H &+ j]), g = S.tanhf(z[2 &* H &+ j]), o = sigmoid(z[3 &* H &+ j])
                z[j] = i; z[H &+ j] = f; z[2 &* H &+ j] = g; z[3 &* H &+ j] = o
                let cj = f * cp[j] + i * g
                cb[j] = cj
                hb[j] = o * S.tanhf(cj)
            }
        }
    }

    /// The backward twin of lstmForward. dh: dL/dh_t (B, H); dc: on entry dL/dc_t from step t+1,
    /// on exit dL/dc_{t-1}; gates: the activations; dz (B, 4H): dL/d(pre-activations).
    @inline(__always) static func lstmBackward<S: BinaryFloatingPoint & ElementaryFunctions>(_ dh: UnsafePointer<S>, _ dc: UnsafeMutablePointer<S>, _ gates: UnsafePointer<S>, _ c: UnsafePointer<S>, _ cPrev: UnsafePointer<S>, _ dz: UnsafeMutablePointer<S>, _ rows: Int, _ H: Int) {
        for b in 0..<rows {
            let a = gates + b &* 4 &* H, d = dz + b &* 4 &* H
            let dhb = dh + b &* H, dcb = dc + b &* H, cb = c + b &* H, cp = cPrev + b &* H
            for j in 0..<H {
                let i = a[j], f = a[H &+ j], g = a[2 &* H &+ j], o = a[3 &* H &+ j]
                let tc = S.tanhf(cb[j])
                let dC = dcb[j] + dhb[j] * o * (1 - tc * tc)
                d[j] = dC * g * i * (1 - i)
                d[H &+ j] = dC * cp[j] * f * (1 - f)
                d[2 &* H &+ j] = dC * i * (1 - g * g)
                d[3 &* H &+ j] = dhb[j] * tc * o * (1 - o)
                dcb[j] = dC * f
            }
        }
    }

    /// One GRU step (PyTorch's nn.GRU). On entry `gates` (B, 3H) holds W_ih x + b_ih as [r | z | n]
    /// and hh (B, 3H) holds W_hh h_{t-1} + b_hh. Computes r = sigmoid(x_r + hh_r),
    /// z = sigmoid(x_z + hh_z), n = tanh(x_n + r * hh_n), h = (1 - z) * n + z * hPrev; stores the
    /// activations r, z, n in `gates` and hh_n in hn (B, H) for the backward pass.
    @inline(__always) static func gruForward<S: BinaryFloatingPoint & ElementaryFunctions>(_ gates: UnsafeMutablePointer<S>, _ hh: UnsafePointer<S>, _ hPrev: UnsafePointer<S>, _ h: UnsafeMutablePointer<S>, _ hn: UnsafeMutablePointer<S>, _ rows: Int, _ H: Int) {
        for b in 0..<rows {
            let x = gates + b &* 3 &* H, u = hh + b &* 3 &* H
            let hp = hPrev + b &* H, hb = h + b &* H, hnb = hn + b &* H
            for j in 0..<H {
                let r = sigmoid(x[j] + u[j])
                let z = sigmoid(x[H &+ j] + u[H &+ j])
                let un = u[2 &* H &+ j]
                let n = S.tanhf(x[2 &* H &+ j] + r * un)
                x[j] = r; x[H &+ j] = z; x[2 &* H &+ j] = n
                hnb[j] = un
                hb[j] = (1 - z) * n + z * hp[j]
            }
        }
    }

    /// The backward twin of gruForward. From dh (B, H) computes the gradients of the input-side
    /// pre-activations dxi = [dr | dz | dn] and the hidden-side ones dhh = [dr | dz | r * dn]
    /// (B, 3H each), and adds z * dh, the direct path, into dhPrev (B, H).
    @inline(__always) static func gruBackward<S: BinaryFloatingPoint & ElementaryFunctions>(_ dh: UnsafePointer<S>, _ gates: UnsafePointer<S>, _ hn: UnsafePointer<S>, _ hPrev: UnsafePointer<S>, _ dxi: UnsafeMutablePointer<S>, _ dhh: UnsafeMutablePointer<S>, _ dhPrev: UnsafeMutablePointer<S>, _ rows: Int, _ H: Int) {
        for b in 0..<rows {
            let a = gates + b &* 3 &* H, dx = dxi + b &* 3 &* H, du = dhh + b &* 3 &* H
            let dhb = dh + b &* H, hnb = hn + b &* H, hp = hPrev + b &* H, dhp = dhPrev + b &* H
            for j in 0..<H {
                let r = a[j], z = a[H &+ j], n = a[2 &* H &+ j]
                let d = dhb[j]
                let dn = d * (1 - z) * (1 - n * n)
                let dz = d * (hp[j] - n) * z * (1 - z)
                let dr = dn * hnb[j] * r * (1 - r)
                dx[j] = dr; dx[H &+ j] = dz; dx[2 &* H &+ j] = dn
                du[j] = dr; du[H &+ j] = dz; du[2 &* H &+ j] = dn * r
                dhp[j] += d * z
            }
        }
    }

    @inline(__always) static func addBiasRows<S: BinaryFloatingPoint>(_ p: UnsafeMutablePointer<S>, _ rows: Int, _ cols: Int, _ b1: UnsafePointer<S>, _ b2: UnsafePointer<S>?) {
        for r in 0..<rows {
            let row = p + r &* cols
            if let b2 {
                for j in 0..<cols { row[j] += b1[j] + b2[j] }
            } else {
                for j in 0..<cols { row[j] += b1[j] }
            }
        }
    }

    /// p[r, :] = b1 + b2: the same values addBiasRows adds, so a product added to them afterwards
    /// gives addBiasRows' bits (x + b is b + x).
    @inline(__always) static func setBiasRows<S: BinaryFloatingPoint>(_ p: UnsafeMutablePointer<S>, _ rows: Int, _ cols: Int, _ b1: UnsafePointer<S>, _ b2: UnsafePointer<S>?) {
        guard rows > 0 else { return }
        if let b2 { for j in 0..<cols { p[j] = b1[j] + b2[j] } } else { p.update(from: b1, count: cols) }
        for r in 1..<rows { (p + r &* cols).update(from: p, count: cols) }
    }

    @inline(__always) static func sumRows<S: BinaryFloatingPoint>(_ p: UnsafePointer<S>, _ rows: Int, _ cols: Int, _ out: UnsafeMutablePointer<S>) {
        for r in 0..<rows {
            let row = p + r &* cols
            for j in 0..<cols { out[j] += row[j] }
        }
    }

    /// out[r, j] += w[j * ldw + tokens[r]]. W_ih (cols, ldw) is first copied transposed into
    /// `table` (ldw, cols), so that each token's column is one contiguous row: the gather then
    /// reads rows instead of one element every ldw (a strided read per element cost 1.7% of a
    /// gru-h512 step). The sums are the same as reading w directly. table nil: w is read in place.
    /// filled: table already holds this w transposed (an earlier gather of the same pass).
    @inline(__always) static func gatherColumns<S: BinaryFloatingPoint>(_ w: UnsafePointer<S>, _ ldw: Int, _ cols: Int, _ tokens: UnsafePointer<Int32>, _ rows: Int, _ out: UnsafeMutablePointer<S>, _ table: UnsafeMutablePointer<S>?, filled: Bool) {
        guard let table else {  // no workspace (a large vocabulary): W_ih's columns in place
            for r in 0..<rows {
                let tok = Int(tokens[r])
                let row = out + r &* cols
                for j in 0..<cols { row[j] += w[j &* ldw &+ tok] }
            }
            return
        }
        if !filled {
            for j in 0..<cols {
                let src = w + j &* ldw
                for v in 0..<ldw { table[v &* cols &+ j] = src[v] }
            }
        }
        for r in 0..<rows {
            let src = table + Int(tokens[r]) &* cols
            let row = out + r &* cols
            for j in 0..<cols { row[j] += src[j] }
        }
    }

    /// dw[j * ldw + tokens[r]] += sum over r of d[r, j], the backward twin of gatherColumns. The
    /// rows are first summed per token into `table` (ldw, cols), zeroed here, in row order, and
    /// the table is then added transposed into dw: dw + (d[r1] + d[r2] + ...), contiguous rows
    /// instead of strided elements. (Into a zeroed dw, as every step's first backward is, this
    /// gives the bits of adding each row into dw directly.)
    @inline(__always) static func scatterAddColumns<S: BinaryFloatingPoint>(_ d: UnsafePointer<S>, _ rows: Int, _ cols: Int, _ tokens: UnsafePointer<Int32>, _ dw: UnsafeMutablePointer<S>, _ ldw: Int, _ table: UnsafeMutablePointer<S>?) {
        guard let table else {
            for r in 0..<rows {
                let tok = Int(tokens[r])
                let row = d + r &* cols
                for j in 0..<cols { dw[j &* ldw &+ tok] += row[j] }
            }
            return
        }
        table.update(repeating: 0, count: ldw &* cols)
        for r in 0..<rows {
            let dst = table + Int(tokens[r]) &* cols
            let row = d + r &* cols
            for j in 0..<cols { dst[j] += row[j] }
        }
        for j in 0..<cols {
            let dst = dw + j &* ldw
            for v in 0..<ldw { dst[v] += table[v &* cols &+ j] }
        }
    }

    @inline(__always) static func softmaxCrossEntropy<S: BinaryFloatingPoint & ElementaryFunctions>(_ logits: UnsafeMutablePointer<S>, _ rows: Int, _ classes: Int, _ targets: UnsafePointer<Int32>, _ scale: S) -> (loss: Double, correct: Int) {
        var loss = 0.0
        var correct = 0
        for r in 0..<rows {
            let z = logits + r &* classes
            var mx = z[0]
            var arg = 0
            for j in 1..<max(classes, 1) where z[j] > mx { mx = z[j]; arg = j }
            let t = Int(targets[r])
            let shifted = z[t] - mx  // log of the target's unnormalized probability
            var sum: S = 0
            for j in 0..<classes {
                let e = S.expf(z[j] - mx)
                z[j] = e
                sum += e
            }
            if arg == t { correct += 1 }
            // -log p_t = log(sum) - (z_t - max): finite even when exp(z_t - max) underflows.
            loss += Double(S.logf(sum)) - Double(shifted)
            let inv = scale / sum
            for j in 0..<classes { z[j] *= inv }
            z[t] -= scale
        }
        return (loss, correct)
    }

    @inline(__always) static func meanSquaredError<S: BinaryFloatingPoint>(_ y: UnsafeMutablePointer<S>, _ t: UnsafePointer<Float>, _ rows: Int, _ width: Int, _ scale: S) -> Double {
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

    /// Adam, per parameter i (torch.optim.Adam's arithmetic, in S):
    ///   m += w1 (g - m)                       exp_avg.lerp_(grad, 1 - beta1)
    ///   v = v b2 + w2 g g                     exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2)
    ///   p -= stepSize (m / (sqrt(v) / bc2Sqrt + eps))
    @inline(__always) static func adamUpdate<S: BinaryFloatingPoint>(_ n: Int, _ p: UnsafeMutablePointer<S>, _ g: UnsafePointer<S>,
                                                                     _ m: UnsafeMutablePointer<S>, _ v: UnsafeMutablePointer<S>,
                                                                     _ c: AdamCoefficients<S>) {
        for i in 0..<n {
            let gi = g[i]
            m[i] += c.w1 * (gi - m[i])
            v[i] = v[i] * c.b2 + c.w2 * gi * gi
            let denom = v[i].squareRoot() / c.bc2Sqrt + c.eps
            p[i] -= c.stepSize * (m[i] / denom)
        }
    }

    @inline(__always) static func sumOfSquares<S: BinaryFloatingPoint>(_ x: UnsafePointer<S>, _ n: Int) -> Double {
        var s = 0.0
        for i in 0..<n { let v = Double(x[i]); s += v * v }
        return s
    }

    @inline(__always) static func allFinite<S: BinaryFloatingPoint>(_ x: UnsafePointer<S>, _ n: Int) -> Bool {
        // A sum of x * 0 is NaN exactly when some x is infinite or NaN; one branch at the end.
        var acc: S = 0
        for i in 0..<n { acc += x[i] * 0 }
        return acc == 0
    }
}

// MARK: normalization

/// Normalization kernels. Layer norm normalizes each block of H values of a row (one gate of one
/// sample at one step) over those H values; batch norm normalizes each column over all rows of the
/// (global) batch. eps = 1e-5 as in PyTorch.
extension Kernels {
    static let normEps = 1e-5

    /// sum[j] += sum_r x[r, j], sumsq[j] += sum_r x[r, j]^2 (in Double).
    @inline(__always) static func columnMoments<S: BinaryFloatingPoint>(_ x: UnsafePointer<S>, _ rows: Int, _ cols: Int, _ sum: UnsafeMutablePointer<Double>, _ sumsq: UnsafeMutablePointer<Double>) {
        for r in 0..<rows {
            let row = x + r &* cols
            for j in 0..<cols { let v = Double(row[j]); sum[j] += v; sumsq[j] += v * v }
        }
    }

    /// x <- gamma * (x - mean) * rstd + beta per column; xhat <- (x - mean) * rstd.
    @inline(__always) static func batchNormApply<S: BinaryFloatingPoint>(_ x: UnsafeMutablePointer<S>, _ rows: Int, _ cols: Int, _ mean: UnsafePointer<Double>, _ rstd: UnsafePointer<Double>, _ gamma: UnsafePointer<S>, _ beta: UnsafePointer<S>, _ xhat: UnsafeMutablePointer<S>) {
        for r in 0..<rows {
            let row = x + r &* cols, hat = xhat + r &* cols
            for j in 0..<cols {
                let h = S((Double(row[j]) - mean[j]) * rstd[j])
                hat[j] = h
                row[j] = gamma[j] * h + beta[j]
            }
        }
    }

    /// sumDy[j] += sum_r dy[r, j], sumDyXhat[j] += sum_r dy[r, j] xhat[r, j].
    @inline(__always) static func batchNormBackwardSums<S: BinaryFloatingPoint>(_ dy: UnsafePointer<S>, _ xhat: UnsafePointer<S>, _ rows: Int, _ cols: Int, _ sumDy: UnsafeMutablePointer<Double>, _ sumDyXhat: UnsafeMutablePointer<Double>) {
        for r in 0..<rows {
            let d = dy + r &* cols, h = xhat + r &* cols
            for j in 0..<cols { sumDy[j] += Double(d[j]); sumDyXhat[j] += Double(d[j]) * Double(h[j]) }
        }
    }

    /// dx = gamma * rstd * (dy - meanDy - xhat * meanDyXhat), in place over dy.
    @inline(__always) static func batchNormBackwardApply<S: BinaryFloatingPoint>(_ dy: UnsafeMutablePointer<S>, _ xhat: UnsafePointer<S>, _ rows: Int, _ cols: Int, _ gamma: UnsafePointer<S>, _ rstd: UnsafePointer<Double>, _ meanDy: UnsafePointer<Double>, _ meanDyXhat: UnsafePointer<Double>) {
        for r in 0..<rows {
            let d = dy + r &* cols, h = xhat + r &* cols
            for j in 0..<cols {
                d[j] = S(Double(gamma[j]) * rstd[j] * (Double(d[j]) - meanDy[j] - Double(h[j]) * meanDyXhat[j]))
            }
        }
    }

    /// Layer norm of one block of n values at z (stride 1): z <- gamma * xhat + beta.
    @inline(__always) static func layerNormBlock<S: BinaryFloatingPoint>(_ z: UnsafeMutablePointer<S>, _ n: Int, _ gamma: UnsafePointer<S>, _ beta: UnsafePointer<S>, _ xhat: UnsafeMutablePointer<S>) -> S {
        var mean = 0.0
        for j in 0..<n { mean += Double(z[j]) }
        mean /= Double(n)
        var v = 0.0
        for j in 0..<n { let d = Double(z[j]) - mean; v += d * d }
        let rstd = 1 / (v / Double(n) + normEps).squareRoot()
        for j in 0..<n {
            let h = S((Double(z[j]) - mean) * rstd)
            xhat[j] = h
            z[j] = gamma[j] * h + beta[j]
        }
        return S(rstd)
    }

    /// The backward twin of layerNormBlock: d (gradient w.r.t. the output) becomes the gradient
    /// w.r.t. the input; dgamma += d * xhat, dbeta += d.
    @inline(__always) static func layerNormBlockBackward<S: BinaryFloatingPoint>(_ d: UnsafeMutablePointer<S>, _ n: Int, _ xhat: UnsafePointer<S>, _ rstd: S, _ gamma: UnsafePointer<S>, _ dgamma: UnsafeMutablePointer<S>, _ dbeta: UnsafeMutablePointer<S>) {
        var meanG = 0.0, meanGX = 0.0
        for j in 0..<n {
            dgamma[j] += d[j] * xhat[j]
            dbeta[j] += d[j]
            let g = Double(d[j]) * Double(gamma[j])
            meanG += g
            meanGX += g * Double(xhat[j])
        }
        meanG /= Double(n)
        meanGX /= Double(n)
        let rs = Double(rstd)
        for j in 0..<n {
            d[j] = S(rs * (Double(d[j]) * Double(gamma[j]) - meanG - Double(xhat[j]) * meanGX))
        }
    }

    /// Layer norm over each of the `blocks` blocks of H values in every row of z (rows, blocks*H).
    @inline(__always) static func layerNormForward<S: BinaryFloatingPoint>(_ z: UnsafeMutablePointer<S>, _ rows: Int, _ blocks: Int, _ H: Int, _ gamma: UnsafePointer<S>, _ beta: UnsafePointer<S>, _ xhat: UnsafeMutablePointer<S>, _ rstd: UnsafeMutablePointer<S>) {
        for r in 0..<rows {
            for g in 0..<blocks {
                let off = (r &* blocks &+ g) &* H
                rstd[r &* blocks &+ g] = layerNormBlock(z + off, H, gamma + g &* H, beta + g &* H, xhat + off)
            }
        }
    }

    @inline(__always) static func layerNormBackward<S: BinaryFloatingPoint>(_ d: UnsafeMutablePointer<S>, _ rows: Int, _ blocks: Int, _ H: Int, _ xhat: UnsafePointer<S>, _ rstd: UnsafePointer<S>, _ gamma: UnsafePointer<S>, _ dgamma: UnsafeMutablePointer<S>, _ dbeta: UnsafeMutablePointer<S>) {
        for r in 0..<rows {
            for g in 0..<blocks {
                let off = (r &* blocks &+ g) &* H
                layerNormBlockBackward(d + off, H, xhat + off, rstd[r &* blocks &+ g], gamma + g &* H, dgamma + g &* H, dbeta + g &* H)
            }
        }
    }

    /// GRU step with layer norm on the pre-activations of r and z (x + hh) and of n
    /// (x_n + r * hh_n). Same buffers as gruForward plus xhat (B, 3H) and rstd (B, 3).
    @inline(__always) static func gruForwardLN<S: BinaryFloatingPoint & ElementaryFunctions>(_ gates: UnsafeMutablePointer<S>, _ hh: UnsafePointer<S>, _ hPrev: UnsafePointer<S>, _ h: UnsafeMutablePointer<S>, _ hn: UnsafeMutablePointer<S>, _ rows: Int, _ H: Int, _ gamma: UnsafePointer<S>, _ beta: UnsafePointer<S>, _ xhat: UnsafeMutablePointer<S>, _ rstd: UnsafeMutablePointer<S>) {
        for b in 0..<rows {
            let x = gates + b &* 3 &* H, u = hh + b &* 3 &* H, xh = xhat + b &* 3 &* H
            let hp = hPrev + b &* H, hb = h + b &* H, hnb = hn + b &* H
            for j in 0..<(2 &* H) { x[j] += u[j] }
            rstd[b &* 3] = layerNormBlock(x, H, gamma, beta, xh)
            rstd[b &* 3 &+ 1] = layerNormBlock(x + H, H, gamma + H, beta + H, xh + H)
            for j in 0..<(2 &* H) { x[j] = sigmoid(x[j]) }
            for j in 0..<H { hnb[j] = u[2 &* H &+ j]; x[2 &* H &+ j] += x[j] * hnb[j] }
            rstd[b &* 3 &+ 2] = layerNormBlock(x + 2 &* H, H, gamma + 2 &* H, beta + 2 &* H, xh + 2 &* H)
            for j in 0..<H {
                let n = S.tanhf(x[2 &* H &+ j])
                x[2 &* H &+ j] = n
                let z = x[H &+ j]
                hb[j] = (1 - z) * n + z * hp[j]
            }
        }
    }

    /// The backward twin of gruForwardLN.
    @inline(__always) static func gruBackwardLN<S: BinaryFloatingPoint & ElementaryFunctions>(_ dh: UnsafePointer<S>, _ gates: UnsafePointer<S>, _ hn: UnsafePointer<S>, _ hPrev: UnsafePointer<S>, _ dxi: UnsafeMutablePointer<S>, _ dhh: UnsafeMutablePointer<S>, _ dhPrev: UnsafeMutablePointer<S>, _ rows: Int, _ H: Int, _ gamma: UnsafePointer<S>, _ xhat: UnsafePointer<S>, _ rstd: UnsafePointer<S>, _ dgamma: UnsafeMutablePointer<S>, _ dbeta: UnsafeMutablePointer<S>) {
        for b in 0..<rows {
            let a = gates + b &* 3 &* H, dx = dxi + b &* 3 &* H, du = dhh + b &* 3 &* H, xh = xhat + b &* 3 &* H
            let dhb = dh + b &* H, hnb = hn + b &* H, hp = hPrev + b &* H, dhp = dhPrev + b &* H
            for j in 0..<H {
                let z = a[H &+ j], n = a[2 &* H &+ j], d = dhb[j]
                dx[2 &* H &+ j] = d * (1 - z) * (1 - n * n)  // d(normalized n pre-activation)
                dx[H &+ j] = d * (hp[j] - n) * z * (1 - z)  // d(normalized z pre-activation)
                dhp[j] += d * z
            }
            layerNormBlockBackward(dx + 2 &* H, H, xh + 2 &* H, rstd[b &* 3 &+ 2], gamma + 2 &* H, dgamma + 2 &* H, dbeta + 2 &* H)
            for j in 0..<H {
                let r = a[j], dn = dx[2 &* H &+ j]
                du[2 &* H &+ j] = dn * r
                dx[j] = dn * hnb[j] * r * (1 - r)  // d(normalized r pre-activation)
            }
            layerNormBlockBackward(dx, H, xh, rstd[b &* 3], gamma, dgamma, dbeta)
            layerNormBlockBackward(dx + H, H, xh + H, rstd[b &* 3 &+ 1], gamma + H, dgamma + H, dbeta + H)
            for j in 0..<(2 &* H) { du[j] = dx[j] }
        }
    }
}
