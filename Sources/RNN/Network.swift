/// A stack of recurrent layers with a dense head, its loss, and backpropagation through time.
///
/// Computation (the cuDNN formulation): for layer k the input projection of all time steps is one
/// matrix product, (T*B, I_k) x (I_k, G*H), or a column gather of W_ih for token input; each time
/// step then adds only the recurrent product h_{t-1} W_hh^T and applies the activation. The
/// backward sweep turns dL/dh_t into the pre-activation gradients in place and, after the sweep,
/// forms every weight gradient of all steps in one product.
///
/// Objective. With per-term losses l (see LossStats) the gradient accumulated by `lossAndGradient`
/// is that of S = sum over this batch's terms of l. `normalizeGradients` then turns the sum over the
/// global batch (after the allreduce) into the gradient the optimizer uses:
///   every_step: (1/B_global) * S, and with average_over_time also 1/T: the per-token mean loss
///               (PyTorch's CrossEntropyLoss/MSELoss default reduction);
///   last_step:  (1/B_global) * S; with average_over_time the recurrent layers' gradients (which BPTT
///               accumulated over the T steps) are further divided by T; the head's are not.
public final class Network<S: RNNScalar> {
    public let spec: ModelSpec
    public let layout: ParameterLayout
    /// The flat parameter buffer, (layout.count), PyTorch names in `layout`.
    public let parameters: Buffer<S>
    /// The flat gradient buffer, same layout. `lossAndGradient` adds into it.
    public let gradients: Buffer<S>

    // Workspaces, sized for the largest (T, B) seen so far; reallocated only when that grows.
    private var capacity = 0  // T*B the workspaces hold
    private var hidden: [Buffer<S>] = []  // per layer: (T, B, H) outputs h_t (pre-activations before the activation pass)
    private var delta = Buffer<S>(count: 0)  // (T, B, H): dL/dh of the current layer, then its dL/dz in place
    private var deltaBelow = Buffer<S>(count: 0)  // (T, B, H): dL/dh of the layer below
    private var dense = Buffer<S>(count: 0)  // (T, B, I): dense input converted to S
    private var head = Buffer<S>(count: 0)  // (T*B or B, O): outputs, then dL/d outputs
    private var h0 = Buffer<S>(count: 0)  // (L, B, H): initial state of the current forward, if any
    private var hasInitialState = false
    private var T = 0
    private var B = 0

    public init(spec: ModelSpec) {
        self.spec = spec
        layout = ParameterLayout(spec: spec)
        parameters = Buffer(count: layout.count)
        gradients = Buffer(count: layout.count)
    }

    private var H: Int { spec.hiddenSize }
    private var O: Int { spec.outputSize }
    private var headRows: Int { spec.output == .everyStep ? T * B : B }

    private func reserve(steps: Int, batch: Int) {
        T = steps
        B = batch
        let need = steps * batch
        guard need > capacity else { return }
        capacity = need
        hidden = (0..<spec.layers).map { _ in Buffer(count: need * spec.cell.gates * H) }
        delta = Buffer(count: need * H)
        deltaBelow = Buffer(count: need * H)
        if case .dense(let f) = spec.input { dense = Buffer(count: need * f) }
        head = Buffer(count: need * O)
    }

    @inline(__always) private func p(_ v: ParamView) -> UnsafeMutablePointer<S> { parameters.pointer + v.offset }
    @inline(__always) private func g(_ v: ParamView) -> UnsafeMutablePointer<S> { gradients.pointer + v.offset }

    /// The head's outputs after `forward`: (T*B, O) for every_step, (B, O) for last_step;
    /// logits for cross-entropy, predictions for MSE.
    public var outputs: UnsafeMutableBufferPointer<S> {
        UnsafeMutableBufferPointer(start: head.pointer, count: headRows * O)
    }

    // MARK: forward

    /// - initialState: (L, B, H) hidden state before step 0 (nil: zeros), e.g. `finalState` of the
    ///   previous chunk when generating text or carrying state across chunks.
    public func forward(_ batch: Batch, initialState: UnsafePointer<S>? = nil) {
        reserve(steps: batch.steps, batch: batch.batchSize)
        let TB = T * B
        hasInitialState = initialState != nil
        if let initialState {
            let n = spec.layers * B * H
            if h0.count < n { h0 = Buffer(count: n) }
            h0.pointer.update(from: initialState, count: n)
        }
        if case .dense(let f) = spec.input {
            precondition(batch.features.count == TB * f, "features must be (T, B, I)")
            batch.features.withUnsafeBufferPointer { S.fromFloat($0.baseAddress!, into: dense.pointer, TB * f) }
        } else {
            precondition(batch.tokens.count == TB, "tokens must be (T, B)")
        }
        batch.tokens.withUnsafeBufferPointer { tokens in
            for k in 0..<spec.layers { forwardLayer(k, tokens: tokens.baseAddress) }
        }
        forwardHead()
    }

    /// Layer k: hidden[k] (T, B, H) = act(X W_ih^T + b_ih + b_hh + h_{t-1} W_hh^T), h_{-1} = 0.
    private func forwardLayer(_ k: Int, tokens: UnsafePointer<Int32>?) {
        let (wih, whh, bih, bhh) = layout.layer(k)
        let out = hidden[k].pointer  // (T, B, H)
        let TB = T * B
        if k == 0, case .tokens(let V) = spec.input {
            out.update(repeating: 0, count: TB * H)
            S.gatherColumns(p(wih), ldw: V, cols: H, tokens: tokens!, rows: TB, into: out)
        } else {
            let (x, width): (UnsafeMutablePointer<S>, Int) = k == 0 ? (dense.pointer, spec.input.width) : (hidden[k - 1].pointer, H)
            S.gemm(transA: false, transB: true, m: TB, n: H, k: width, alpha: 1, a: x, lda: width,
                   b: p(wih), ldb: width, beta: 0, c: out, ldc: H)
        }
        S.addBiasRows(out, rows: TB, cols: H, p(bih), p(bhh))
        for t in 0..<T {
            let ht = out + t * B * H  // (B, H)
            let prev: UnsafeMutablePointer<S>? = t > 0 ? ht - B * H : (hasInitialState ? h0.pointer + k * B * H : nil)
            if let prev {
                S.gemm(transA: false, transB: true, m: B, n: H, k: H, alpha: 1, a: prev, lda: H,
                       b: p(whh), ldb: H, beta: 1, c: ht, ldc: H)
            }
            S.activationForward(spec.activation, ht, B * H)
        }
    }

    /// head (rows, O) = h_top W^T + b over every step or the last step.
    private func forwardHead() {
        let top = hidden[spec.layers - 1].pointer
        let input = spec.output == .everyStep ? top : top + (T - 1) * B * H
        S.gemm(transA: false, transB: true, m: headRows, n: O, k: H, alpha: 1, a: input, lda: H,
               b: p(layout.headWeight), ldb: H, beta: 0, c: head.pointer, ldc: O)
        S.addBiasRows(head.pointer, rows: headRows, cols: O, p(layout.headBias), nil)
    }

    /// Copies the hidden state after the last step of the latest forward, (L, B, H), into `out`.
    public func finalState(into out: UnsafeMutablePointer<S>) {
        for k in 0..<spec.layers {
            (out + k * B * H).update(from: hidden[k].pointer + (T - 1) * B * H, count: B * H)
        }
    }

    // MARK: loss

    /// Forward pass and loss terms, without gradients (evaluation).
    public func loss(_ batch: Batch, initialState: UnsafePointer<S>? = nil) -> LossStats {
        forward(batch, initialState: initialState)
        return applyLoss(batch, scale: 0)
    }

    /// Replaces the head's outputs by scale * dl/d(outputs) and returns the loss sums.
    private func applyLoss(_ batch: Batch, scale: S) -> LossStats {
        let rows = headRows
        switch spec.loss {
        case .crossEntropy:
            precondition(batch.targetClasses.count == rows, "class targets must be (T, B) or (B)")
            let r = batch.targetClasses.withUnsafeBufferPointer {
                S.softmaxCrossEntropy(head.pointer, rows: rows, classes: O, targets: $0.baseAddress!, scale: scale)
            }
            return LossStats(sum: r.loss, count: rows, correct: r.correct)
        case .mse:
            precondition(batch.targetValues.count == rows * O, "value targets must be (T, B, O) or (B, O)")
            let s = batch.targetValues.withUnsafeBufferPointer {
                S.meanSquaredError(head.pointer, targets: $0.baseAddress!, rows: rows, width: O, scale: scale)
            }
            return LossStats(sum: s, count: rows)
        }
    }

    // MARK: backward

    /// Forward, loss, and backpropagation through time. Adds d(sum of loss terms)/d(parameters)
    /// into `gradients` (zero it first for a fresh step) and returns the loss sums.
    @discardableResult
    public func lossAndGradient(_ batch: Batch, initialState: UnsafePointer<S>? = nil) -> LossStats {
        forward(batch, initialState: initialState)
        let stats = applyLoss(batch, scale: 1)
        backward(batch)
        return stats
    }

    private func backward(_ batch: Batch) {
        let TB = T * B
        let top = hidden[spec.layers - 1].pointer
        // Head: dW += dOut^T h, db += sum dOut, dh = dOut W.
        let input = spec.output == .everyStep ? top : top + (T - 1) * B * H
        S.gemm(transA: true, transB: false, m: O, n: H, k: headRows, alpha: 1, a: head.pointer, lda: O,
               b: input, ldb: H, beta: 1, c: g(layout.headWeight), ldc: H)
        S.sumRows(head.pointer, rows: headRows, cols: O, into: g(layout.headBias))
        if spec.output == .everyStep {
            S.gemm(transA: false, transB: false, m: TB, n: H, k: O, alpha: 1, a: head.pointer, lda: O,
                   b: p(layout.headWeight), ldb: H, beta: 0, c: delta.pointer, ldc: H)
        } else {
            delta.pointer.update(repeating: 0, count: (T - 1) * B * H)
            S.gemm(transA: false, transB: false, m: B, n: H, k: O, alpha: 1, a: head.pointer, lda: O,
                   b: p(layout.headWeight), ldb: H, beta: 0, c: delta.pointer + (T - 1) * B * H, ldc: H)
        }
        batch.tokens.withUnsafeBufferPointer { tokens in
            for k in stride(from: spec.layers - 1, through: 0, by: -1) {
                backwardLayer(k, tokens: tokens.baseAddress)
                if k > 0 { swap(&delta, &deltaBelow) }
            }
        }
    }

    /// The backward twin of forwardLayer. On entry `delta` holds dL/dh of layer k (T, B, H); on
    /// exit it holds dL/dz (pre-activation), and for k > 0 `deltaBelow` holds dL/dh of layer k-1.
    private func backwardLayer(_ k: Int, tokens: UnsafePointer<Int32>?) {
        let (wih, whh, bih, bhh) = layout.layer(k)
        let h = hidden[k].pointer  // (T, B, H)
        let d = delta.pointer  // (T, B, H)
        let TB = T * B
        for t in stride(from: T - 1, through: 0, by: -1) {
            let dt = d + t * B * H
            S.activationBackward(spec.activation, y: h + t * B * H, d: dt, B * H)  // dz_t
            if t > 0 {  // dh_{t-1} += dz_t W_hh
                S.gemm(transA: false, transB: false, m: B, n: H, k: H, alpha: 1, a: dt, lda: H,
                       b: p(whh), ldb: H, beta: 1, c: dt - B * H, ldc: H)
            }
        }
        // dW_hh += sum_{t>=1} dz_t^T h_{t-1}: one product over (T-1)*B rows.
        if T > 1 {
            S.gemm(transA: true, transB: false, m: H, n: H, k: (T - 1) * B, alpha: 1, a: d + B * H, lda: H,
                   b: h, ldb: H, beta: 1, c: g(whh), ldc: H)
        }
        if hasInitialState {  // the t = 0 term, dz_0^T h_{-1}
            S.gemm(transA: true, transB: false, m: H, n: H, k: B, alpha: 1, a: d, lda: H,
                   b: h0.pointer + k * B * H, ldb: H, beta: 1, c: g(whh), ldc: H)
        }
        S.sumRows(d, rows: TB, cols: H, into: g(bih))
        S.sumRows(d, rows: TB, cols: H, into: g(bhh))
        if k == 0, case .tokens(let V) = spec.input {
            S.scatterAddColumns(d, rows: TB, cols: H, tokens: tokens!, into: g(wih), ldw: V)
        } else {
            let (x, width): (UnsafeMutablePointer<S>, Int) = k == 0 ? (dense.pointer, spec.input.width) : (hidden[k - 1].pointer, H)
            S.gemm(transA: true, transB: false, m: H, n: width, k: TB, alpha: 1, a: d, lda: H,
                   b: x, ldb: width, beta: 1, c: g(wih), ldc: width)
        }
        if k > 0 {  // dL/dh_{k-1} = dz W_ih
            S.gemm(transA: false, transB: false, m: TB, n: H, k: H, alpha: 1, a: d, lda: H,
                   b: p(wih), ldb: H, beta: 0, c: deltaBelow.pointer, ldc: H)
        }
    }

    // MARK: gradient normalization

    /// Turns the summed gradient of the global batch into the gradient of the objective (see the
    /// type's documentation): divide by the global number of samples, and by T where asked.
    public func normalizeGradients(globalSamples: Int, steps: Int) {
        let perSample = 1 / S(globalSamples)
        let t = spec.averageOverTime ? S(steps) : 1
        switch spec.output {
        case .everyStep:
            S.scale(n: layout.count, alpha: perSample / t, x: gradients.pointer)
        case .lastStep:
            S.scale(n: layout.recurrentCount, alpha: perSample / t, x: gradients.pointer)
            S.scale(n: layout.count - layout.recurrentCount, alpha: perSample,
                    x: gradients.pointer + layout.recurrentCount)
        }
    }
}
