// The scalar types the numerics run in. Float is what training uses; Double exists so that the
// same code path can be checked against finite differences with rounding error far below the
// tolerance (see Tests/RNNTests/GradientCheckTests.swift).
//
// The generic driver code (layers, network) calls only the static kernels below; each kernel is
// implemented once, generically, in Kernels.swift, and instantiated for Float and Double in the
// conformances, so every hot loop runs specialized code even when the driver is generic.

import COpenBLAS
import CRecurrent
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public protocol RNNScalar: BinaryFloatingPoint, Sendable {
    /// Row-major GEMM: C (m, n) = alpha * op(A) (m, k) * op(B) (k, n) + beta * C.
    static func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Self,
                     a: UnsafePointer<Self>, lda: Int, b: UnsafePointer<Self>, ldb: Int,
                     beta: Self, c: UnsafeMutablePointer<Self>, ldc: Int)
    /// y += alpha * x over n elements.
    static func axpy(n: Int, alpha: Self, x: UnsafePointer<Self>, y: UnsafeMutablePointer<Self>)
    /// x *= alpha over n elements.
    static func scale(n: Int, alpha: Self, x: UnsafeMutablePointer<Self>)
    /// The per-step recurrent products' W_hh (G*H, H) packed for this forward pass (RecurrentProducts.swift),
    /// reusing `reuse`'s memory; nil where the products stay cblas gemm (Double, or RNN_DP_PRODUCTS=openblas).
    static func packRecurrent(_ w: UnsafePointer<Self>, gatesTimesHidden: Int, hidden: Int,
                              reuse: PackedRecurrentWeights?) -> PackedRecurrentWeights?
    /// out (B, G*H) += hPrev (B, H) W_hh^T, with the packed W_hh when there is one.
    static func recurrentForward(_ packed: PackedRecurrentWeights?, w: UnsafePointer<Self>, hPrev: UnsafePointer<Self>,
                                 rows: Int, gatesTimesHidden: Int, hidden: Int, into out: UnsafeMutablePointer<Self>)
    /// out (B, H) += dz (B, G*H) W_hh (accumulate) or = (not), with the packed W_hh when there is
    /// one. The head's input gradient, dOut (rows, O) W_head (O, D*H), takes the same path.
    static func recurrentBackward(_ packed: PackedRecurrentWeights?, w: UnsafePointer<Self>, dz: UnsafePointer<Self>,
                                  rows: Int, gatesTimesHidden: Int, hidden: Int, into out: UnsafeMutablePointer<Self>, accumulate: Bool)

    /// In place: z <- act(z) over n elements (slope: leaky_relu's negative slope).
    static func activationForward(_ act: Activation, slope: Self, _ z: UnsafeMutablePointer<Self>, _ n: Int)
    /// In place: d <- d * act'(z), written in terms of the output y = act(z).
    static func activationBackward(_ act: Activation, slope: Self, y: UnsafePointer<Self>, d: UnsafeMutablePointer<Self>, _ n: Int)
    /// One LSTM step over B rows (see Kernels.lstmForward).
    static func lstmForward(gates: UnsafeMutablePointer<Self>, cPrev: UnsafePointer<Self>, c: UnsafeMutablePointer<Self>,
                            h: UnsafeMutablePointer<Self>, rows: Int, hidden: Int)
    /// The backward twin of lstmForward (see Kernels.lstmBackward).
    static func lstmBackward(dh: UnsafePointer<Self>, dc: UnsafeMutablePointer<Self>, gates: UnsafePointer<Self>,
                             c: UnsafePointer<Self>, cPrev: UnsafePointer<Self>, dz: UnsafeMutablePointer<Self>, rows: Int, hidden: Int)
    /// One GRU step over B rows (see Kernels.gruForward).
    static func gruForward(gates: UnsafeMutablePointer<Self>, hh: UnsafePointer<Self>, hPrev: UnsafePointer<Self>,
                           h: UnsafeMutablePointer<Self>, hn: UnsafeMutablePointer<Self>, rows: Int, hidden: Int)
    /// The backward twin of gruForward (see Kernels.gruBackward).
    static func gruBackward(dh: UnsafePointer<Self>, gates: UnsafePointer<Self>, hn: UnsafePointer<Self>, hPrev: UnsafePointer<Self>,
                            dxi: UnsafeMutablePointer<Self>, dhh: UnsafeMutablePointer<Self>, dhPrev: UnsafeMutablePointer<Self>,
                            rows: Int, hidden: Int)
    /// rows x cols matrix p: p[r, :] += bias1 + bias2.
    static func addBiasRows(_ p: UnsafeMutablePointer<Self>, rows: Int, cols: Int,
                            _ bias1: UnsafePointer<Self>, _ bias2: UnsafePointer<Self>?)
    /// rows x cols matrix p: p[r, :] = bias1 + bias2 (the output a product then adds to).
    static func setBiasRows(_ p: UnsafeMutablePointer<Self>, rows: Int, cols: Int,
                            _ bias1: UnsafePointer<Self>, _ bias2: UnsafePointer<Self>?)
    /// out[j] += sum over r of p[r, j].
    static func sumRows(_ p: UnsafePointer<Self>, rows: Int, cols: Int, into out: UnsafeMutablePointer<Self>)
    /// out[r, j] += w[j * ldw + tokens[r]] for r < rows, j < cols: the row gather that replaces a
    /// one-hot input times W_ih^T (W_ih is (cols, ldw) row-major, so a token selects a column).
    /// table: a workspace of ldw * cols scalars (W_ih transposed, Kernels.gatherColumns), or nil
    /// to read w's columns in place; filled: an earlier gather of this w has filled table already.
    static func gatherColumns(_ w: UnsafePointer<Self>, ldw: Int, cols: Int, tokens: UnsafePointer<Int32>,
                              rows: Int, into out: UnsafeMutablePointer<Self>, table: UnsafeMutablePointer<Self>?, filled: Bool)
    /// The backward twin of gatherColumns: dw[j * ldw + tokens[r]] += d[r, j], summed per token in
    /// the workspace table (ldw * cols scalars) first.
    static func scatterAddColumns(_ d: UnsafePointer<Self>, rows: Int, cols: Int, tokens: UnsafePointer<Int32>,
                                  into dw: UnsafeMutablePointer<Self>, ldw: Int, table: UnsafeMutablePointer<Self>?)
    /// Softmax cross-entropy over rows of logits (rows, classes). Replaces logits by
    /// scale * (softmax - onehot(target)) and returns (sum of -log p[target], number correct).
    static func softmaxCrossEntropy(_ logits: UnsafeMutablePointer<Self>, rows: Int, classes: Int,
                                    targets: UnsafePointer<Int32>, scale: Self) -> (loss: Double, correct: Int)
    /// Mean squared error per row over `width` outputs: loss_r = mean_o (y - t)^2. Replaces y by
    /// scale * d loss_r / d y = scale * 2 (y - t) / width and returns the sum of loss_r.
    static func meanSquaredError(_ y: UnsafeMutablePointer<Self>, targets: UnsafePointer<Float>, rows: Int,
                                 width: Int, scale: Self) -> Double
    // Normalization (Kernels.swift, "normalization").
    static func columnMoments(_ x: UnsafePointer<Self>, rows: Int, cols: Int, sum: UnsafeMutablePointer<Double>, sumsq: UnsafeMutablePointer<Double>)
    static func batchNormApply(_ x: UnsafeMutablePointer<Self>, rows: Int, cols: Int, mean: UnsafePointer<Double>, rstd: UnsafePointer<Double>,
                               gamma: UnsafePointer<Self>, beta: UnsafePointer<Self>, xhat: UnsafeMutablePointer<Self>)
    static func batchNormBackwardSums(_ dy: UnsafePointer<Self>, xhat: UnsafePointer<Self>, rows: Int, cols: Int,
                                      sumDy: UnsafeMutablePointer<Double>, sumDyXhat: UnsafeMutablePointer<Double>)
    static func batchNormBackwardApply(_ dy: UnsafeMutablePointer<Self>, xhat: UnsafePointer<Self>, rows: Int, cols: Int, gamma: UnsafePointer<Self>,
                                       rstd: UnsafePointer<Double>, meanDy: UnsafePointer<Double>, meanDyXhat: UnsafePointer<Double>)
    static func layerNormForward(_ z: UnsafeMutablePointer<Self>, rows: Int, blocks: Int, hidden: Int, gamma: UnsafePointer<Self>,
                                 beta: UnsafePointer<Self>, xhat: UnsafeMutablePointer<Self>, rstd: UnsafeMutablePointer<Self>)
    static func layerNormBackward(_ d: UnsafeMutablePointer<Self>, rows: Int, blocks: Int, hidden: Int, xhat: UnsafePointer<Self>,
                                  rstd: UnsafePointer<Self>, gamma: UnsafePointer<Self>, dgamma: UnsafeMutablePointer<Self>, dbeta: UnsafeMutablePointer<Self>)
    static func gruForwardLN(gates: UnsafeMutablePointer<Self>, hh: UnsafePointer<Self>, hPrev: UnsafePointer<Self>, h: UnsafeMutablePointer<Self>,
                             hn: UnsafeMutablePointer<Self>, rows: Int, hidden: Int, gamma: UnsafePointer<Self>, beta: UnsafePointer<Self>,
                             xhat: UnsafeMutablePointer<Self>, rstd: UnsafeMutablePointer<Self>)
    static func gruBackwardLN(dh: UnsafePointer<Self>, gates: UnsafePointer<Self>, hn: UnsafePointer<Self>, hPrev: UnsafePointer<Self>,
                              dxi: UnsafeMutablePointer<Self>, dhh: UnsafeMutablePointer<Self>, dhPrev: UnsafeMutablePointer<Self>, rows: Int, hidden: Int,
                              gamma: UnsafePointer<Self>, xhat: UnsafePointer<Self>, rstd: UnsafePointer<Self>, dgamma: UnsafeMutablePointer<Self>,
                              dbeta: UnsafeMutablePointer<Self>)
    /// Sum of squares, accumulated in Double.
    static func sumOfSquares(_ x: UnsafePointer<Self>, _ n: Int) -> Double
    /// Adam's update of n parameters (see Kernels.adamUpdate; the coefficients come from Adam.step).
    static func adamUpdate(_ n: Int, p: UnsafeMutablePointer<Self>, g: UnsafePointer<Self>, m: UnsafeMutablePointer<Self>,
                           v: UnsafeMutablePointer<Self>, _ c: AdamCoefficients<Self>)
    /// True when every element is finite.
    static func allFinite(_ x: UnsafePointer<Self>, _ n: Int) -> Bool
    static func fromFloat(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Self>, _ n: Int)
}

@inline(__always) func cblasTrans(_ t: Bool) -> CBLAS_TRANSPOSE { t ? CblasTrans : CblasNoTrans }

extension Float: RNNScalar {
    public static func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                            a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                            beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        if m == 0 || n == 0 { return }
        cblas_sgemm(CblasRowMajor, cblasTrans(transA), cblasTrans(transB), Int32(m), Int32(n), Int32(k),
                    alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }
    public static func axpy(n: Int, alpha: Float, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        cblas_saxpy(Int32(n), alpha, x, 1, y, 1)
    }
    public static func scale(n: Int, alpha: Float, x: UnsafeMutablePointer<Float>) { cblas_sscal(Int32(n), alpha, x, 1) }
    public static func packRecurrent(_ w: UnsafePointer<Float>, gatesTimesHidden: Int, hidden: Int,
                                     reuse: PackedRecurrentWeights?) -> PackedRecurrentWeights? {
        guard case .packed(let level) = RecurrentProducts.current else { return nil }
        let packed = reuse.flatMap { $0.gatesTimesHidden == gatesTimesHidden && $0.hidden == hidden && $0.level == level ? $0 : nil }
            ?? PackedRecurrentWeights(gatesTimesHidden: gatesTimesHidden, hidden: hidden, level: level)
        packed.pack(w)
        return packed
    }
    public static func recurrentForward(_ packed: PackedRecurrentWeights?, w: UnsafePointer<Float>, hPrev: UnsafePointer<Float>,
                                        rows: Int, gatesTimesHidden: Int, hidden: Int, into out: UnsafeMutablePointer<Float>) {
        if let packed { packed.forward(hPrev, rows: rows, into: out); return }
        gemm(transA: false, transB: true, m: rows, n: gatesTimesHidden, k: hidden, alpha: 1, a: hPrev, lda: hidden,
             b: w, ldb: hidden, beta: 1, c: out, ldc: gatesTimesHidden)
    }
    public static func recurrentBackward(_ packed: PackedRecurrentWeights?, w: UnsafePointer<Float>, dz: UnsafePointer<Float>,
                                         rows: Int, gatesTimesHidden: Int, hidden: Int, into out: UnsafeMutablePointer<Float>, accumulate: Bool) {
        if let packed { packed.backward(dz, rows: rows, into: out, accumulate: accumulate); return }
        gemm(transA: false, transB: false, m: rows, n: hidden, k: gatesTimesHidden, alpha: 1, a: dz, lda: gatesTimesHidden,
             b: w, ldb: hidden, beta: accumulate ? 1 : 0, c: out, ldc: hidden)
    }
    public static func activationForward(_ act: Activation, slope: Float, _ z: UnsafeMutablePointer<Float>, _ n: Int) { VectorKernels.activationForward(act, slope, z, n) }
    public static func activationBackward(_ act: Activation, slope: Float, y: UnsafePointer<Float>, d: UnsafeMutablePointer<Float>, _ n: Int) { Kernels.activationBackward(act, slope, y, d, n) }
    public static func lstmForward(gates: UnsafeMutablePointer<Float>, cPrev: UnsafePointer<Float>, c: UnsafeMutablePointer<Float>, h: UnsafeMutablePointer<Float>, rows: Int, hidden: Int) { VectorKernels.lstmForward(gates, cPrev, c, h, rows, hidden) }
    public static func lstmBackward(dh: UnsafePointer<Float>, dc: UnsafeMutablePointer<Float>, gates: UnsafePointer<Float>, c: UnsafePointer<Float>, cPrev: UnsafePointer<Float>, dz: UnsafeMutablePointer<Float>, rows: Int, hidden: Int) { VectorKernels.lstmBackward(dh, dc, gates, c, cPrev, dz, rows, hidden) }
    public static func gruForward(gates: UnsafeMutablePointer<Float>, hh: UnsafePointer<Float>, hPrev: UnsafePointer<Float>, h: UnsafeMutablePointer<Float>, hn: UnsafeMutablePointer<Float>, rows: Int, hidden: Int) { VectorKernels.gruForward(gates, hh, hPrev, h, hn, rows, hidden) }
    public static func gruBackward(dh: UnsafePointer<Float>, gates: UnsafePointer<Float>, hn: UnsafePointer<Float>, hPrev: UnsafePointer<Float>, dxi: UnsafeMutablePointer<Float>, dhh: UnsafeMutablePointer<Float>, dhPrev: UnsafeMutablePointer<Float>, rows: Int, hidden: Int) { VectorKernels.gruBackward(dh, gates, hn, hPrev, dxi, dhh, dhPrev, rows, hidden) }
    public static func addBiasRows(_ p: UnsafeMutablePointer<Float>, rows: Int, cols: Int, _ b1: UnsafePointer<Float>, _ b2: UnsafePointer<Float>?) { Kernels.addBiasRows(p, rows, cols, b1, b2) }
    public static func setBiasRows(_ p: UnsafeMutablePointer<Float>, rows: Int, cols: Int, _ b1: UnsafePointer<Float>, _ b2: UnsafePointer<Float>?) { Kernels.setBiasRows(p, rows, cols, b1, b2) }
    public static func sumRows(_ p: UnsafePointer<Float>, rows: Int, cols: Int, into out: UnsafeMutablePointer<Float>) { Kernels.sumRows(p, rows, cols, out) }
    public static func gatherColumns(_ w: UnsafePointer<Float>, ldw: Int, cols: Int, tokens: UnsafePointer<Int32>, rows: Int, into out: UnsafeMutablePointer<Float>, table: UnsafeMutablePointer<Float>?, filled: Bool) { Kernels.gatherColumns(w, ldw, cols, tokens, rows, out, table, filled: filled) }
    public static func scatterAddColumns(_ d: UnsafePointer<Float>, rows: Int, cols: Int, tokens: UnsafePointer<Int32>, into dw: UnsafeMutablePointer<Float>, ldw: Int, table: UnsafeMutablePointer<Float>?) { Kernels.scatterAddColumns(d, rows, cols, tokens, dw, ldw, table) }
    public static func softmaxCrossEntropy(_ l: UnsafeMutablePointer<Float>, rows: Int, classes: Int, targets: UnsafePointer<Int32>, scale: Float) -> (loss: Double, correct: Int) { VectorKernels.softmaxCrossEntropy(l, rows, classes, targets, scale) }
    public static func meanSquaredError(_ y: UnsafeMutablePointer<Float>, targets: UnsafePointer<Float>, rows: Int, width: Int, scale: Float) -> Double { Kernels.meanSquaredError(y, targets, rows, width, scale) }
    public static func sumOfSquares(_ x: UnsafePointer<Float>, _ n: Int) -> Double { Kernels.sumOfSquares(x, n) }
    public static func adamUpdate(_ n: Int, p: UnsafeMutablePointer<Float>, g: UnsafePointer<Float>, m: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>, _ c: AdamCoefficients<Float>) { VectorKernels.adamUpdate(n, p, g, m, v, c) }
    public static func columnMoments(_ x: UnsafePointer<Float>, rows: Int, cols: Int, sum: UnsafeMutablePointer<Double>, sumsq: UnsafeMutablePointer<Double>) { Kernels.columnMoments(x, rows, cols, sum, sumsq) }
    public static func batchNormApply(_ x: UnsafeMutablePointer<Float>, rows: Int, cols: Int, mean: UnsafePointer<Double>, rstd: UnsafePointer<Double>, gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>, xhat: UnsafeMutablePointer<Float>) { Kernels.batchNormApply(x, rows, cols, mean, rstd, gamma, beta, xhat) }
    public static func batchNormBackwardSums(_ dy: UnsafePointer<Float>, xhat: UnsafePointer<Float>, rows: Int, cols: Int, sumDy: UnsafeMutablePointer<Double>, sumDyXhat: UnsafeMutablePointer<Double>) { Kernels.batchNormBackwardSums(dy, xhat, rows, cols, sumDy, sumDyXhat) }
    public static func batchNormBackwardApply(_ dy: UnsafeMutablePointer<Float>, xhat: UnsafePointer<Float>, rows: Int, cols: Int, gamma: UnsafePointer<Float>, rstd: UnsafePointer<Double>, meanDy: UnsafePointer<Double>, meanDyXhat: UnsafePointer<Double>) { Kernels.batchNormBackwardApply(dy, xhat, rows, cols, gamma, rstd, meanDy, meanDyXhat) }
    public static func layerNormForward(_ z: UnsafeMutablePointer<Float>, rows: Int, blocks: Int, hidden: Int, gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>, xhat: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>) { Kernels.layerNormForward(z, rows, blocks, hidden, gamma, beta, xhat, rstd) }
    public static func layerNormBackward(_ d: UnsafeMutablePointer<Float>, rows: Int, blocks: Int, hidden: Int, xhat: UnsafePointer<Float>, rstd: UnsafePointer<Float>, gamma: UnsafePointer<Float>, dgamma: UnsafeMutablePointer<Float>, dbeta: UnsafeMutablePointer<Float>) { Kernels.layerNormBackward(d, rows, blocks, hidden, xhat, rstd, gamma, dgamma, dbeta) }
    public static func gruForwardLN(gates: UnsafeMutablePointer<Float>, hh: UnsafePointer<Float>, hPrev: UnsafePointer<Float>, h: UnsafeMutablePointer<Float>, hn: UnsafeMutablePointer<Float>, rows: Int, hidden: Int, gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>, xhat: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>) { Kernels.gruForwardLN(gates, hh, hPrev, h, hn, rows, hidden, gamma, beta, xhat, rstd) }
    public static func gruBackwardLN(dh: UnsafePointer<Float>, gates: UnsafePointer<Float>, hn: UnsafePointer<Float>, hPrev: UnsafePointer<Float>, dxi: UnsafeMutablePointer<Float>, dhh: UnsafeMutablePointer<Float>, dhPrev: UnsafeMutablePointer<Float>, rows: Int, hidden: Int, gamma: UnsafePointer<Float>, xhat: UnsafePointer<Float>, rstd: UnsafePointer<Float>, dgamma: UnsafeMutablePointer<Float>, dbeta: UnsafeMutablePointer<Float>) { Kernels.gruBackwardLN(dh, gates, hn, hPrev, dxi, dhh, dhPrev, rows, hidden, gamma, xhat, rstd, dgamma, dbeta) }
    public static func allFinite(_ x: UnsafePointer<Float>, _ n: Int) -> Bool { Kernels.allFinite(x, n) }
    public static func fromFloat(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, _ n: Int) { y.update(from: x, count: n) }
}

extension Double: RNNScalar {
    public static func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Double,
                            a: UnsafePointer<Double>, lda: Int, b: UnsafePointer<Double>, ldb: Int,
                            beta: Double, c: UnsafeMutablePointer<Double>, ldc: Int) {
        if m == 0 || n == 0 { return }
        cblas_dgemm(CblasRowMajor, cblasTrans(transA), cblasTrans(transB), Int32(m), Int32(n), Int32(k),
                    alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }
    public static func axpy(n: Int, alpha: Double, x: UnsafePointer<Double>, y: UnsafeMutablePointer<Double>) {
        cblas_daxpy(Int32(n), alpha, x, 1, y, 1)
    }
    public static func scale(n: Int, alpha: Double, x: UnsafeMutablePointer<Double>) { cblas_dscal(Int32(n), alpha, x, 1) }
    public static func packRecurrent(_ w: UnsafePointer<Double>, gatesTimesHidden: Int, hidden: Int,
                                     reuse: PackedRecurrentWeights?) -> PackedRecurrentWeights? { nil }
    public static func recurrentForward(_ packed: PackedRecurrentWeights?, w: UnsafePointer<Double>, hPrev: UnsafePointer<Double>,
                                        rows: Int, gatesTimesHidden: Int, hidden: Int, into out: UnsafeMutablePointer<Double>) {
        gemm(transA: false, transB: true, m: rows, n: gatesTimesHidden, k: hidden, alpha: 1, a: hPrev, lda: hidden,
             b: w, ldb: hidden, beta: 1, c: out, ldc: gatesTimesHidden)
    }
    public static func recurrentBackward(_ packed: PackedRecurrentWeights?, w: UnsafePointer<Double>, dz: UnsafePointer<Double>,
                                         rows: Int, gatesTimesHidden: Int, hidden: Int, into out: UnsafeMutablePointer<Double>, accumulate: Bool) {
        gemm(transA: false, transB: false, m: rows, n: hidden, k: gatesTimesHidden, alpha: 1, a: dz, lda: gatesTimesHidden,
             b: w, ldb: hidden, beta: accumulate ? 1 : 0, c: out, ldc: hidden)
    }
    public static func activationForward(_ act: Activation, slope: Double, _ z: UnsafeMutablePointer<Double>, _ n: Int) { Kernels.activationForward(act, slope, z, n) }
    public static func activationBackward(_ act: Activation, slope: Double, y: UnsafePointer<Double>, d: UnsafeMutablePointer<Double>, _ n: Int) { Kernels.activationBackward(act, slope, y, d, n) }
    public static func lstmForward(gates: UnsafeMutablePointer<Double>, cPrev: UnsafePointer<Double>, c: UnsafeMutablePointer<Double>, h: UnsafeMutablePointer<Double>, rows: Int, hidden: Int) { Kernels.lstmForward(gates, cPrev, c, h, rows, hidden) }
    public static func lstmBackward(dh: UnsafePointer<Double>, dc: UnsafeMutablePointer<Double>, gates: UnsafePointer<Double>, c: UnsafePointer<Double>, cPrev: UnsafePointer<Double>, dz: UnsafeMutablePointer<Double>, rows: Int, hidden: Int) { Kernels.lstmBackward(dh, dc, gates, c, cPrev, dz, rows, hidden) }
    public static func gruForward(gates: UnsafeMutablePointer<Double>, hh: UnsafePointer<Double>, hPrev: UnsafePointer<Double>, h: UnsafeMutablePointer<Double>, hn: UnsafeMutablePointer<Double>, rows: Int, hidden: Int) { Kernels.gruForward(gates, hh, hPrev, h, hn, rows, hidden) }
    public static func gruBackward(dh: UnsafePointer<Double>, gates: UnsafePointer<Double>, hn: UnsafePointer<Double>, hPrev: UnsafePointer<Double>, dxi: UnsafeMutablePointer<Double>, dhh: UnsafeMutablePointer<Double>, dhPrev: UnsafeMutablePointer<Double>, rows: Int, hidden: Int) { Kernels.gruBackward(dh, gates, hn, hPrev, dxi, dhh, dhPrev, rows, hidden) }
    public static func addBiasRows(_ p: UnsafeMutablePointer<Double>, rows: Int, cols: Int, _ b1: UnsafePointer<Double>, _ b2: UnsafePointer<Double>?) { Kernels.addBiasRows(p, rows, cols, b1, b2) }
    public static func setBiasRows(_ p: UnsafeMutablePointer<Double>, rows: Int, cols: Int, _ b1: UnsafePointer<Double>, _ b2: UnsafePointer<Double>?) { Kernels.setBiasRows(p, rows, cols, b1, b2) }
    public static func sumRows(_ p: UnsafePointer<Double>, rows: Int, cols: Int, into out: UnsafeMutablePointer<Double>) { Kernels.sumRows(p, rows, cols, out) }
    public static func gatherColumns(_ w: UnsafePointer<Double>, ldw: Int, cols: Int, tokens: UnsafePointer<Int32>, rows: Int, into out: UnsafeMutablePointer<Double>, table: UnsafeMutablePointer<Double>?, filled: Bool) { Kernels.gatherColumns(w, ldw, cols, tokens, rows, out, table, filled: filled) }
    public static func scatterAddColumns(_ d: UnsafePointer<Double>, rows: Int, cols: Int, tokens: UnsafePointer<Int32>, into dw: UnsafeMutablePointer<Double>, ldw: Int, table: UnsafeMutablePointer<Double>?) { Kernels.scatterAddColumns(d, rows, cols, tokens, dw, ldw, table) }
    public static func softmaxCrossEntropy(_ l: UnsafeMutablePointer<Double>, rows: Int, classes: Int, targets: UnsafePointer<Int32>, scale: Double) -> (loss: Double, correct: Int) { Kernels.softmaxCrossEntropy(l, rows, classes, targets, scale) }
    public static func meanSquaredError(_ y: UnsafeMutablePointer<Double>, targets: UnsafePointer<Float>, rows: Int, width: Int, scale: Double) -> Double { Kernels.meanSquaredError(y, targets, rows, width, scale) }
    public static func sumOfSquares(_ x: UnsafePointer<Double>, _ n: Int) -> Double { Kernels.sumOfSquares(x, n) }
    public static func adamUpdate(_ n: Int, p: UnsafeMutablePointer<Double>, g: UnsafePointer<Double>, m: UnsafeMutablePointer<Double>, v: UnsafeMutablePointer<Double>, _ c: AdamCoefficients<Double>) { Kernels.adamUpdate(n, p, g, m, v, c) }
    public static func columnMoments(_ x: UnsafePointer<Double>, rows: Int, cols: Int, sum: UnsafeMutablePointer<Double>, sumsq: UnsafeMutablePointer<Double>) { Kernels.columnMoments(x, rows, cols, sum, sumsq) }
    public static func batchNormApply(_ x: UnsafeMutablePointer<Double>, rows: Int, cols: Int, mean: UnsafePointer<Double>, rstd: UnsafePointer<Double>, gamma: UnsafePointer<Double>, beta: UnsafePointer<Double>, xhat: UnsafeMutablePointer<Double>) { Kernels.batchNormApply(x, rows, cols, mean, rstd, gamma, beta, xhat) }
    public static func batchNormBackwardSums(_ dy: UnsafePointer<Double>, xhat: UnsafePointer<Double>, rows: Int, cols: Int, sumDy: UnsafeMutablePointer<Double>, sumDyXhat: UnsafeMutablePointer<Double>) { Kernels.batchNormBackwardSums(dy, xhat, rows, cols, sumDy, sumDyXhat) }
    public static func batchNormBackwardApply(_ dy: UnsafeMutablePointer<Double>, xhat: UnsafePointer<Double>, rows: Int, cols: Int, gamma: UnsafePointer<Double>, rstd: UnsafePointer<Double>, meanDy: UnsafePointer<Double>, meanDyXhat: UnsafePointer<Double>) { Kernels.batchNormBackwardApply(dy, xhat, rows, cols, gamma, rstd, meanDy, meanDyXhat) }
    public static func layerNormForward(_ z: UnsafeMutablePointer<Double>, rows: Int, blocks: Int, hidden: Int, gamma: UnsafePointer<Double>, beta: UnsafePointer<Double>, xhat: UnsafeMutablePointer<Double>, rstd: UnsafeMutablePointer<Double>) { Kernels.layerNormForward(z, rows, blocks, hidden, gamma, beta, xhat, rstd) }
    public static func layerNormBackward(_ d: UnsafeMutablePointer<Double>, rows: Int, blocks: Int, hidden: Int, xhat: UnsafePointer<Double>, rstd: UnsafePointer<Double>, gamma: UnsafePointer<Double>, dgamma: UnsafeMutablePointer<Double>, dbeta: UnsafeMutablePointer<Double>) { Kernels.layerNormBackward(d, rows, blocks, hidden, xhat, rstd, gamma, dgamma, dbeta) }
    public static func gruForwardLN(gates: UnsafeMutablePointer<Double>, hh: UnsafePointer<Double>, hPrev: UnsafePointer<Double>, h: UnsafeMutablePointer<Double>, hn: UnsafeMutablePointer<Double>, rows: Int, hidden: Int, gamma: UnsafePointer<Double>, beta: UnsafePointer<Double>, xhat: UnsafeMutablePointer<Double>, rstd: UnsafeMutablePointer<Double>) { Kernels.gruForwardLN(gates, hh, hPrev, h, hn, rows, hidden, gamma, beta, xhat, rstd) }
    public static func gruBackwardLN(dh: UnsafePointer<Double>, gates: UnsafePointer<Double>, hn: UnsafePointer<Double>, hPrev: UnsafePointer<Double>, dxi: UnsafeMutablePointer<Double>, dhh: UnsafeMutablePointer<Double>, dhPrev: UnsafeMutablePointer<Double>, rows: Int, hidden: Int, gamma: UnsafePointer<Double>, xhat: UnsafePointer<Double>, rstd: UnsafePointer<Double>, dgamma: UnsafeMutablePointer<Double>, dbeta: UnsafeMutablePointer<Double>) { Kernels.gruBackwardLN(dh, gates, hn, hPrev, dxi, dhh, dhPrev, rows, hidden, gamma, xhat, rstd, dgamma, dbeta) }
    public static func allFinite(_ x: UnsafePointer<Double>, _ n: Int) -> Bool { Kernels.allFinite(x, n) }
    public static func fromFloat(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Double>, _ n: Int) {
        for i in 0..<n { y[i] = Double(x[i]) }
    }
}

/// The elementary functions the kernels need, for each scalar type.
public protocol ElementaryFunctions {
    static func tanhf(_ x: Self) -> Self
    static func expf(_ x: Self) -> Self
    static func logf(_ x: Self) -> Self
}
extension Float: ElementaryFunctions {
    @inline(__always) public static func tanhf(_ x: Float) -> Float { FastMath.tanh(x) }
    @inline(__always) public static func expf(_ x: Float) -> Float { FastMath.exp(x) }
    @inline(__always) public static func logf(_ x: Float) -> Float { log(x) }
}
extension Double: ElementaryFunctions {
    @inline(__always) public static func tanhf(_ x: Double) -> Double { tanh(x) }
    @inline(__always) public static func expf(_ x: Double) -> Double { exp(x) }
    @inline(__always) public static func logf(_ x: Double) -> Double { log(x) }
}

/// Sets the number of threads OpenBLAS may use in this process.
/// Threads for OpenBLAS and for our packed recurrent kernel (CRecurrent), whose bits do not
/// depend on the count.
public func setBLASThreads(_ n: Int) {
    openblas_set_num_threads(Int32(max(1, n)))
    crec_set_threads(Int32(max(1, n)))
}
public func blasThreads() -> Int { Int(openblas_get_num_threads()) }
