/// A stack of recurrent layers (Elman, LSTM or GRU) with a dense head, its loss, and
/// backpropagation through time.
///
/// Computation (the cuDNN formulation): for layer k the input projection of all time steps is one
/// matrix product, (T*B, I_k) x (I_k, G*H), or a column gather of W_ih for token input; each time
/// step then adds only the recurrent product h_{t-1} W_hh^T and applies the cell's elementwise
/// step. The backward sweep turns dL/dh_t into gate pre-activation gradients and, after the sweep,
/// forms every weight gradient of all steps in one product.
///
/// Objective. With per-term losses l (see LossStats) the gradient accumulated by `lossAndGradient`
/// is that of S = sum over this batch's terms of l. `normalizeGradients` then turns the sum over the
/// global batch (after the allreduce) into the gradient the optimizer uses:
///   every_step: (1/B_global) * S, and with average_over_time (1/n_global) * S, n_global the
///               number of valid terms (B_global * T for equal lengths): the per-token mean loss
///               (PyTorch's CrossEntropyLoss/MSELoss default reduction over the packed terms);
///   last_step:  (1/B_global) * S; with average_over_time the recurrent layers' gradients (which BPTT
///               accumulated over the time steps) are divided by n_global, the samples' lengths
///               summed, instead (1/(B_global*T) for equal lengths); the head's are not.
///
/// Sequences of different lengths arrive in the packed layout (see Batch): every per-step buffer
/// below has N = sum(lengths) rows, step t's B_t rows at offset[t], and the recurrent sweep of
/// step t computes B_t rows, so padding costs nothing.
public final class Network<S: RNNScalar> {
    public let spec: ModelSpec
    public let layout: ParameterLayout
    /// The flat parameter buffer, PyTorch names in `layout`: (layout.count), or for a pipeline
    /// stage its own tensors only, element i being the layout's element `stageBase + i`.
    public let parameters: Buffer<S>
    /// The flat gradient buffer, the same elements as `parameters`. `lossAndGradient` adds into it.
    public let gradients: Buffer<S>
    /// The layout's offset of this network's first element (0 unless a later pipeline stage).
    public let stageBase: Int

    /// Per-layer activations kept for the backward pass.
    final class LayerStore {
        var h: Buffer<S>  // (T, B, H): outputs h_t (Elman: pre-activations before the activation pass)
        var gates: Buffer<S>  // (T, B, G*H): LSTM i,f,g,o / GRU r,z,n activations (empty for Elman)
        var cell: Buffer<S>  // (T, B, H): LSTM c_t (empty otherwise)
        var hn: Buffer<S>  // (T, B, H): GRU W_hn h_{t-1} + b_hn (empty otherwise)
        var lnHat: Buffer<S>  // (T, B, G*H): layer norm's normalized pre-activations
        var lnRstd: Buffer<S>  // (T, B, G): their 1/std
        var bnHat: Buffer<S>  // (T, B, G*H): batch norm's normalized input projections
        /// - outputOnly: just h (a stage's copy of the output of the layer below it); empty: nothing.
        init(_ tb: Int, _ H: Int, _ spec: ModelSpec, outputOnly: Bool = false) {
            let cell = spec.cell, G = cell.gates
            h = Buffer(count: tb * H)
            if outputOnly {
                (gates, self.cell, hn, lnHat, lnRstd, bnHat) = (Buffer(count: 0), Buffer(count: 0), Buffer(count: 0), Buffer(count: 0), Buffer(count: 0), Buffer(count: 0))
                return
            }
            gates = Buffer(count: cell == .rnn ? 0 : tb * G * H)
            self.cell = Buffer(count: cell == .lstm ? tb * H : 0)
            hn = Buffer(count: cell == .gru ? tb * H : 0)
            lnHat = Buffer(count: spec.layerNorm ? tb * G * H : 0)
            lnRstd = Buffer(count: spec.layerNorm ? tb * G : 0)
            bnHat = Buffer(count: spec.batchNorm ? tb * G * H : 0)
        }
    }

    // Workspaces, sized for the largest (T, B) seen so far; reallocated only when that grows.
    private var capacity = 0  // T*B the workspaces hold
    private var batchCapacity = 0  // B the per-step workspaces hold
    private var store: [LayerStore] = []
    private var delta: [Buffer<S>] = []  // D x (T, B, H): dL/dh of the current layer's units, each in its own time order (Elman: then dL/dz in place)
    private var deltaBelow: [Buffer<S>] = []  // D x (T, B, H): dL/dh of the layer below
    // One direction (the chunked backward, `backwardChunks`): dL/dh of the stage's layers, (T, B, H)
    // each: one per layer when the sequence is cut into several chunks (every layer's sweep is
    // under way at once), else two used in turn. dz of each layer likewise (T, B, G*H): one per
    // layer with several chunks (their weight gradients come after the last chunk), else one.
    private var layerDelta: [Buffer<S>] = []
    private var layerDz: [Buffer<S>] = []
    private var layerDhh: [Buffer<S>] = []  // GRU: the hidden-side twin of layerDz
    private var dInput = Buffer<S>(count: 0)  // (T, B, width): dL/d(input) of one layer, chunk by chunk
    private var received = Buffer<S>(count: 0)  // (T, B, H): the stage above's dL/dh, chunk by chunk
    // Bidirectional layers: each layer's output [forward | backward] per step, (T, B, 2H); the
    // reversed-in-time input and tokens of a backward unit; the head's input for last_step,
    // (B, 2H); the gradient of a unit's input, and of the layer's, (T, B, width).
    private var cat: [Buffer<S>] = []
    private var reversedInput = Buffer<S>(count: 0)
    private var reversedTokens: [Int32] = []
    private var lastTop = Buffer<S>(count: 0)
    private var dUnitInput = Buffer<S>(count: 0)
    private var dLayerInput = Buffer<S>(count: 0)
    private var dxi = Buffer<S>(count: 0)  // (T, B, G*H): dL/d(input-side pre-activations), LSTM and GRU
    private var dhh = Buffer<S>(count: 0)  // (T, B, G*H): dL/d(hidden-side pre-activations), GRU
    private var dense = Buffer<S>(count: 0)  // (T, B, I): dense input converted to S
    private var head = Buffer<S>(count: 0)  // (T*B or B, O): outputs, then dL/d outputs
    private var state0 = Buffer<S>(count: 0)  // (L*D, C, B, H): initial state of this forward (h, then c for LSTM)
    private var initialStateGiven = false  // this forward's state0 came from the caller
    /// Unit k's h_{-1} is zero in this forward (no state given, no learned h0), so the products
    /// with it (h_{-1} W_hh^T at step 0, dU_0^T h_{-1} in dW_hh) add nothing and are skipped.
    @inline(__always) private func zeroInitialH(_ k: Int) -> Bool { !initialStateGiven && layout.layer(k).h0 == nil }
    private var dState0 = Buffer<S>(count: 0)  // (L*D, C, B, H): its gradient after backward
    private var hh = Buffer<S>(count: 0)  // (B, G*H): GRU per-step W_hh h + b_hh
    private var dc: [Buffer<S>] = []  // L*D x (B, H): LSTM dL/dc of each unit, carried backward from chunk to chunk
    // Dropout (training passes): per place, the factor of every element, 0 or 1/(1-p); and the
    // dropped copies the next layer and the head read. Place 0: the dense input (T, B, I),
    // place k in 1..<L: layer k's input, the output of layer k-1 (T, B, D*H); place L: the
    // head's input (rows, D*H).
    private var embedded = Buffer<S>(count: 0)  // (T, B, E): the embedding rows of the tokens
    private var dEmbedded = Buffer<S>(count: 0)  // (T, B, E): their gradient
    private var dropFactor: [Buffer<S>] = []
    private var dropped: [Buffer<S>] = []  // (T, B, D*H) per place 1..<L, then (rows, D*H) for the head
    private var dropoutOn = false  // this forward applies dropout (a training pass with some p > 0)
    // (L * D): each unit's W_hh (G*H, H) packed by its latest forward for the per-step products of that
    // forward and the backward after it (nil: the products are cblas gemm). The parameters change
    // only between a forward and the next one, never between a forward and its backward.
    private var packedWhh: [PackedRecurrentWeights?]
    /// W_head (O, D*H) packed for the head's input gradient (backwardHead), repacked every backward.
    private var packedHead: PackedRecurrentWeights?
    private var T = 0
    private var B = 0
    // The packed layout of the latest forward (see Batch): step t's rows are samples 0..<rowsAt[t]
    // from row offset[t] on; N rows in all (T*B for equal lengths). `ragged`: the lengths differ.
    private var lengths: [Int] = []  // (B): each sample's steps, nonincreasing
    private var rowsAt: [Int] = []  // (T): B_t, the samples longer than t
    private var offset: [Int] = []  // (T + 1): the row of step t's sample 0; offset[T] = N
    private var N = 0
    private var ragged = false
    private var hPrevRows = Buffer<S>(count: 0)  // (N, H): h_{t-1} beside each row of step t (ragged batches' dW_hh)
    // (V, G*H): one-hot token input's W_ih transposed (forward) or dW_ih summed per token
    // (backward), so that a token's column is a contiguous row (Kernels.gatherColumns). Only for
    // V <= tokenTableVocabulary, where the transpose costs at most a 4096-row gather; larger
    // vocabularies read W_ih's columns in place.
    private var tokenTable = Buffer<S>(count: 0)
    private var tokenTableOrNil: UnsafeMutablePointer<S>? { tokenTable.count > 0 ? tokenTable.pointer : nil }
    static var tokenTableVocabulary: Int { 4096 }
    /// The token table's size for a network holding layer 0 (0 when the input has no table).
    public static func tokenTableScalars(_ spec: ModelSpec) -> Int {
        guard case .tokens(let V) = spec.input, spec.embeddingSize == nil, V <= tokenTableVocabulary else { return 0 }
        return V * spec.cell.gates * spec.hiddenSize
    }
    private var dHead = Buffer<S>(count: 0)  // (B, D*H): dL/d(head input) for last_step, scattered to each sample's last step
    /// (T, B) of the latest forward.
    public var lastSteps: Int { T }
    public var lastBatch: Int { B }
    /// Rows of the latest forward's per-step arrays: sum of the lengths (T*B for equal lengths).
    public var lastRows: Int { N }
    /// Sample-steps computed by the recurrent sweeps of every unit so far (forward, then
    /// backward): padding costs nothing, so a batch of lengths {3, 20} adds 23 per unit and sweep.
    public private(set) var stepsComputed = 0

    // MARK: pipeline stages and chunks

    /// The layers this network computes (pipeline model parallelism, docs/PARALLELISM.md): all of
    /// them by default. A stage that does not start at layer 0 receives its input, the output of
    /// layer `stageLayers.lowerBound - 1`, through `pipe` and sends dL/d(that input) back; one
    /// that does not end at the top sends its top layer's output and receives its gradient; only
    /// the last stage has the head and the loss. Its parameters and gradients are its own tensors
    /// only, the layout's range `stageParameters` (names and offsets stay the whole model's).
    public let stageLayers: Range<Int>
    public var isFirstStage: Bool { stageLayers.lowerBound == 0 }
    public var isLastStage: Bool { stageLayers.upperBound == spec.layers }

    /// Time steps per chunk of the forward and backward sweeps (0: the whole sequence). The
    /// sweeps run chunk by chunk, each chunk through every layer of the stage, so a pipeline's
    /// stages work at once on different chunks; the weight-gradient products stay one product
    /// each after the last chunk. The products of a chunk see the same shapes whatever the stage
    /// split, so a pipeline computes the same bits as one process with the same `chunkSteps`.
    /// One direction only; batch norm needs the whole sequence (one chunk).
    public var chunkSteps = 0 {
        didSet { precondition(chunkSteps >= 0) }
    }

    /// The messages between neighbouring stages, set by the trainer (the numerics stay free of
    /// MPI). Chunk c's messages carry its rows, (rows of steps of chunk c, H); receives block
    /// until the data is there, sends return at once and `flush` waits for them.
    public struct Pipe {
        public var receiveActivations: (_ chunk: Int, _ into: UnsafeMutableBufferPointer<S>) -> Void
        public var sendActivations: (_ chunk: Int, _ from: UnsafeBufferPointer<S>) -> Void
        public var receiveGradient: (_ chunk: Int, _ into: UnsafeMutableBufferPointer<S>) -> Void
        public var sendGradient: (_ chunk: Int, _ from: UnsafeBufferPointer<S>) -> Void
        /// Lets outstanding messages progress (called every few steps of a sweep).
        public var progress: () -> Void
        /// Waits for this pass's sends (end of forward, end of backward).
        public var flush: () -> Void
        public init(receiveActivations: @escaping (Int, UnsafeMutableBufferPointer<S>) -> Void,
                    sendActivations: @escaping (Int, UnsafeBufferPointer<S>) -> Void,
                    receiveGradient: @escaping (Int, UnsafeMutableBufferPointer<S>) -> Void,
                    sendGradient: @escaping (Int, UnsafeBufferPointer<S>) -> Void,
                    progress: @escaping () -> Void, flush: @escaping () -> Void) {
            self.receiveActivations = receiveActivations
            self.sendActivations = sendActivations
            self.receiveGradient = receiveGradient
            self.sendGradient = sendGradient
            self.progress = progress
            self.flush = flush
        }
    }
    public var pipe: Pipe?

    /// This stage's tensors (all of them without a pipeline).
    public var stageViews: [ParamView] { layout.views.filter { stageParameters.contains($0.offset) } }

    /// The range of the layout holding this stage's tensors: the embedding with the first stage,
    /// the head with the last (`ParameterLayout` orders them so).
    public var stageParameters: Range<Int> { stageBase..<(stageBase + parameters.count) }

    /// The layout's range of the tensors of layers `layers` (with the embedding when they start at
    /// 0, with the head when they end at the top).
    public static func parameterRange(_ layout: ParameterLayout, spec: ModelSpec, layers: Range<Int>) -> Range<Int> {
        let D = spec.directions
        let lo = layers.lowerBound == 0 ? 0 : layout.layer(layers.lowerBound * D).wih.offset
        let hi = layers.upperBound == spec.layers ? layout.count : layout.layer(layers.upperBound * D).wih.offset
        return lo..<hi
    }

    /// Chunks of a sweep of T steps in chunks of `chunkSteps` (0: the whole sequence).
    public static func chunks(steps T: Int, chunkSteps k: Int) -> Int { k == 0 || k >= T ? 1 : (T + k - 1) / k }
    /// Chunks of the latest forward, and chunk c's steps.
    private var chunkCount: Int { Self.chunks(steps: T, chunkSteps: chunkSteps) }
    private func chunk(_ c: Int) -> Range<Int> { chunkCount == 1 ? 0..<T : (c * chunkSteps)..<min((c + 1) * chunkSteps, T) }
    /// The rows of the packed buffers that steps `steps` occupy.
    private func rows(_ steps: Range<Int>) -> Range<Int> { offset[steps.lowerBound]..<offset[steps.upperBound] }
    /// Whether layer k's unit is computed here.
    @inline(__always) private func inStage(unit k: Int) -> Bool { stageLayers.contains(k / D) }

    /// When set, the backward pass records sum over the batch of ||dL/dh_t||^2 per layer and step
    /// in `dhNormSquares` (L, T), for Diagnostics. Off by default: it costs a pass over dL/dh.
    public var collectDiagnostics = false

    /// Called during the backward pass with an offset into the gradient buffer from which on every
    /// gradient is final (after the head, then after each layer from the top), so that their
    /// exchange can start while the layers below are still being computed.
    public var onGradientsFinal: ((Int) -> Void)?
    /// Called every few time steps of the backward sweep, to let outstanding communication progress.
    public var onProgress: (() -> Void)?
    public private(set) var dhNormSquares: [Double] = []

    /// Batch norm's running statistics (L, 2, G*H): mean, then (unbiased) variance, updated with
    /// momentum 0.1 by every `lossAndGradient` and used by evaluation (PyTorch's BatchNorm rules).
    /// Identical on every rank, since they come from the global batch's statistics.
    public let runningStatistics: Buffer<S>
    public static var batchNormMomentum: Double { 0.1 }

    /// Sums a vector over all ranks in place (an allreduce), for the statistics batch norm needs
    /// from the global batch. nil: this process holds the whole batch. Set by the trainer; the
    /// numerics stay free of MPI.
    public var reduceAcrossRanks: ((UnsafeMutableBufferPointer<Double>) -> Void)?

    /// Deferred running statistics (for a caller that sums micro-shards exactly): when set, training forwards leave
    /// `runningStatistics` alone and add each forward's batch statistics here instead, (L, 2, G*H):
    /// mean, then unbiased variance, plus in the last element the number of forwards added. The
    /// trainer sums these over micro-shards exactly and applies them once per step with
    /// `updateRunningStatistics`.
    public var deferredStatistics: [Double]?

    // Batch norm's statistics of the latest forward, (L, 2, G*H): per layer the mean, then 1/std;
    // and the scratch for one layer's column sums and their reduction across ranks, (2*G*H + 1).
    private let bnStats: Buffer<Double>
    private let bnSums: Buffer<Double>
    private var training = false

    /// - stageLayers: the layers this network computes (a pipeline stage, see `stageLayers`); its
    ///   parameter and gradient buffers then hold the stage's tensors only. Default: all.
    /// - gradients: false for a network that only reads its parameters (evaluation, sampling).
    public init(spec: ModelSpec, stageLayers: Range<Int>? = nil, gradients withGradients: Bool = true) {
        self.spec = spec
        layout = ParameterLayout(spec: spec)
        let layers = stageLayers ?? 0..<spec.layers
        precondition(!layers.isEmpty && layers.lowerBound >= 0 && layers.upperBound <= spec.layers)
        precondition(layers.count == spec.layers || spec.directions == 1, "a pipeline stage holds one direction")
        self.stageLayers = layers
        let own = Self.parameterRange(layout, spec: spec, layers: layers)
        stageBase = own.lowerBound
        parameters = Buffer(count: own.count)
        gradients = Buffer(count: withGradients ? own.count : 0)
        let gh = spec.cell.gates * spec.hiddenSize
        runningStatistics = Buffer(count: spec.batchNorm ? spec.units * 2 * gh : 0)
        bnStats = Buffer(count: spec.batchNorm ? spec.units * 2 * gh : 0)
        bnSums = Buffer(count: spec.batchNorm ? 2 * gh + 1 : 0)
        if layers.contains(0) { tokenTable = Buffer(count: Self.tokenTableScalars(spec)) }
        packedWhh = Array(repeating: nil, count: spec.units)
        for k in 0..<(spec.batchNorm ? spec.units : 0) {
            for j in 0..<gh { runningStatistics[(2 * k + 1) * gh + j] = 1 }
        }
    }

    private var H: Int { spec.hiddenSize }
    private var G: Int { spec.cell.gates }
    private var O: Int { spec.outputSize }
    private var C: Int { spec.cell.stateTensors }
    private var headRows: Int { spec.output == .everyStep ? N : B }
    private var slope: S { S(spec.leakySlope) }

    private func reserve(steps: Int, batch: Int, lengths given: [Int32]) {
        T = steps
        B = batch
        // Rebuilt in place (keeping their capacity): a step allocates nothing.
        lengths.removeAll(keepingCapacity: true)
        if given.isEmpty {
            for _ in 0..<batch { lengths.append(steps) }
        } else {
            precondition(given.count == batch && Int(given[0]) == steps && given.last! >= 1,
                         "lengths must be (B), nonincreasing, the first equal to T")
            for b in 0..<batch {
                precondition(b == 0 || given[b] <= given[b - 1], "lengths must be nonincreasing (longest first)")
                lengths.append(Int(given[b]))
            }
        }
        rowsAt.removeAll(keepingCapacity: true)
        offset.removeAll(keepingCapacity: true)
        offset.append(0)
        var active = batch
        for t in 0..<steps {
            while active > 0 && lengths[active - 1] <= t { active -= 1 }
            rowsAt.append(active)
            offset.append(offset[t] + active)
        }
        N = offset[steps]
        ragged = N != steps * batch
        if ragged && hPrevRows.count < N * H { hPrevRows = Buffer(count: steps * batch * H) }
        let need = steps * batch
        let perLayer = D == 1 && chunkCount > 1  // every layer's backward under way at once
        let stageUnits = stageLayers.count * D
        let deltaSlots = perLayer ? stageUnits : min(2, stageUnits)  // one direction's dL/dh buffers
        if need > capacity || (D == 1 && layerDelta.count != deltaSlots) {
            capacity = max(capacity, need)
            let need = capacity  // a change of the chunk count keeps the size
            let below = stageLayers.lowerBound - 1  // the layer whose output a later stage receives
            store = (0..<spec.units).map { k in
                inStage(unit: k) ? LayerStore(need, H, spec) : LayerStore(k == below ? need : 0, H, spec, outputOnly: true)
            }
            if D == 1 {
                layerDelta = (0..<deltaSlots).map { _ in Buffer(count: need * H) }
                layerDz = spec.cell == .rnn ? [] : (0..<(perLayer ? stageUnits : 1)).map { _ in Buffer(count: need * G * H) }
                layerDhh = spec.cell != .gru ? [] : (0..<(perLayer ? stageUnits : 1)).map { _ in Buffer(count: need * G * H) }
                dInput = Buffer(count: need * max(spec.firstLayerInputWidth, spec.layerOutputWidth))
                received = Buffer(count: isLastStage ? 0 : need * H)
            } else {
                delta = (0..<D).map { _ in Buffer(count: need * H) }
                deltaBelow = (0..<D).map { _ in Buffer(count: need * H) }
            }
            if D == 2 {
                let widest = max(spec.firstLayerInputWidth, spec.layerOutputWidth)
                cat = (0..<spec.layers).map { _ in Buffer(count: need * 2 * H) }
                reversedInput = Buffer(count: need * widest)
                reversedTokens = [Int32](repeating: 0, count: need)
                dUnitInput = Buffer(count: need * widest)
                dLayerInput = Buffer(count: need * widest)
            }
            dxi = Buffer(count: spec.cell == .rnn || D == 1 ? 0 : need * G * H)
            dhh = Buffer(count: spec.cell == .gru && D == 2 ? need * G * H : 0)
            if isFirstStage, case .dense(let f) = spec.input { dense = Buffer(count: need * f) }
            if isFirstStage, let E = spec.embeddingSize {
                embedded = Buffer(count: need * E)
                dEmbedded = Buffer(count: need * E)
            }
            head = Buffer(count: isLastStage ? need * O : 0)
            if spec.dropout > 0 || spec.inputDropout > 0 || spec.headDropout > 0 {
                let width = { (place: Int) -> Int in
                    if place == 0 { if let E = self.spec.embeddingSize { return E }; if case .dense(let f) = self.spec.input { return f }; return 0 }
                    return self.spec.layerOutputWidth
                }
                dropFactor = (0...spec.layers).map { Buffer(count: need * width($0)) }
                dropped = (0...spec.layers).map { Buffer(count: $0 == 0 ? 0 : need * self.spec.layerOutputWidth) }
            }
        }
        if batch > batchCapacity {
            batchCapacity = batch
            state0 = Buffer(count: spec.units * C * batch * H)
            dState0 = Buffer(count: spec.units * C * batch * H)
            if spec.output == .lastStep {
                lastTop = Buffer(count: batch * D * H)
                dHead = Buffer(count: batch * D * H)
            }
            hh = Buffer(count: spec.cell == .gru ? batch * G * H : 0)
            dc = (0..<spec.units).map { _ in Buffer(count: spec.cell == .lstm ? batch * H : 0) }
        }
    }

    /// Scalars held by the activations kept for the backward pass and the other workspaces, at
    /// the largest (T, B) seen so far (for memory accounting: `rnn-dp bench`'s peak memory).
    public var workspaceScalars: Int {
        let packed = hPrevRows.count + dHead.count
        let layers = store.reduce(0) { $0 + $1.h.count + $1.gates.count + $1.cell.count + $1.hn.count + $1.lnHat.count + $1.lnRstd.count + $1.bnHat.count }
        let dropout = dropFactor.reduce(0) { $0 + $1.count } + dropped.reduce(0) { $0 + $1.count }
        let bidirectional = cat.reduce(0) { $0 + $1.count } + reversedInput.count + lastTop.count + dUnitInput.count + dLayerInput.count
        let deltas = delta.reduce(0) { $0 + $1.count } + deltaBelow.reduce(0) { $0 + $1.count } + layerDelta.reduce(0) { $0 + $1.count }
            + layerDz.reduce(0) { $0 + $1.count } + layerDhh.reduce(0) { $0 + $1.count } + dInput.count + received.count
        return packed + layers + dropout + bidirectional + embedded.count + dEmbedded.count + deltas + dxi.count + dhh.count + dense.count + head.count
            + state0.count + dState0.count + hh.count + dc.reduce(0) { $0 + $1.count } + tokenTable.count
    }

    @inline(__always) private func p(_ v: ParamView) -> UnsafeMutablePointer<S> { parameters.pointer + (v.offset - stageBase) }
    @inline(__always) private func g(_ v: ParamView) -> UnsafeMutablePointer<S> { gradients.pointer + (v.offset - stageBase) }
    /// Initial state of layer k, tensor c (0: h, 1: LSTM cell), (B, H).
    @inline(__always) private func s0(_ k: Int, _ c: Int) -> UnsafeMutablePointer<S> { state0.pointer + (k * C + c) * B * H }
    @inline(__always) private func ds0(_ k: Int, _ c: Int) -> UnsafeMutablePointer<S> { dState0.pointer + (k * C + c) * B * H }

    /// The head's outputs after `forward`: (T*B, O) for every_step, (B, O) for last_step;
    /// logits for cross-entropy, predictions for MSE.
    public var outputs: UnsafeMutableBufferPointer<S> {
        UnsafeMutableBufferPointer(start: head.pointer, count: headRows * O)
    }

    /// Number of state tensors per layer and sample: (L, C, B, H) is the shape of a state.
    public var stateCount: Int { spec.units * C * H }

    // MARK: forward

    /// - initialState: (L, C, B, H) state before step 0: h (and c for LSTM) of every layer, e.g.
    ///   `finalState` of the previous chunk. nil: the learned initial state if the model has one,
    ///   else zeros.
    /// - training: batch norm uses (and updates the running averages from) the global batch's
    ///   statistics; otherwise its running statistics.
    public func forward(_ batch: Batch, initialState: UnsafePointer<S>? = nil, training: Bool = false) {
        self.training = training
        reserve(steps: batch.steps, batch: batch.batchSize, lengths: batch.lengths)
        let TB = N
        setInitialState(initialState)
        if case .dense(let f) = spec.input {
            precondition(batch.features.count == TB * f, "features must be (T, B, I), packed")
            if isFirstStage { batch.features.withUnsafeBufferPointer { S.fromFloat($0.baseAddress!, into: dense.pointer, TB * f) } }
        } else {
            precondition(batch.tokens.count == TB, "tokens must be (T, B), packed")
        }
        if isFirstStage, let E = spec.embeddingSize {
            // embedded[r] = embedding.weight[token r], (T*B, E)
            let w = p(layout.embedding!)
            for r in 0..<TB { (embedded.pointer + r * E).update(from: w + Int(batch.tokens[r]) * E, count: E) }
        }
        dropoutOn = training && (spec.dropout > 0 || spec.inputDropout > 0 || spec.headDropout > 0)
        rowKeys = batch.rowKeys
        if isFirstStage && dropoutOn && spec.inputDropout > 0, let (x, width) = layerInput(0) {
            applyDropout(place: 0, p: spec.inputDropout, x: x, into: x, width: width, lastSteps: false)
        }
        if D == 1 {
            batch.tokens.withUnsafeBufferPointer { forwardChunks(tokens: $0.baseAddress) }
            if isLastStage { forwardHead() }
            return
        }
        batch.tokens.withUnsafeBufferPointer { tokens in
            for k in 0..<spec.layers {
                if k > 0 && dropoutOn && spec.dropout > 0 {
                    applyDropout(place: k, p: spec.dropout, x: layerOutput(k - 1), into: dropped[k].pointer,
                                 width: spec.layerOutputWidth, lastSteps: false)
                }
                forwardLayer(k * D, tokens: tokens.baseAddress)
                if D == 2 {
                    reverseInput(layer: k, tokens: tokens.baseAddress)
                    forwardLayer(k * D + 1, tokens: reversedTokens.withUnsafeBufferPointer { $0.baseAddress })
                    concatenate(layer: k)
                }
            }
        }
        forwardHead()
    }

    private var D: Int { spec.directions }

    /// One direction: chunk by chunk, each chunk through every layer of the stage (after the
    /// input the stage below sends), its top layer's output sent on to the stage above.
    private func forwardChunks(tokens: UnsafePointer<Int32>?) {
        let k0 = stageLayers.lowerBound, top = stageLayers.upperBound - 1, W = spec.layerOutputWidth
        for c in 0..<chunkCount {
            let steps = chunk(c), r = rows(steps)
            if !isFirstStage {
                pipe!.receiveActivations(c, UnsafeMutableBufferPointer(start: layerOutput(k0 - 1) + r.lowerBound * W, count: r.count * W))
            }
            for k in stageLayers {
                if k > 0 && dropoutOn && spec.dropout > 0 {
                    applyDropout(place: k, p: spec.dropout, x: layerOutput(k - 1), into: dropped[k].pointer,
                                 width: W, lastSteps: false, steps: steps)
                }
                forwardLayer(k, tokens: tokens, steps: steps)
            }
            if !isLastStage {
                pipe!.sendActivations(c, UnsafeBufferPointer(start: layerOutput(top) + r.lowerBound * W, count: r.count * W))
            }
        }
        pipe?.flush()
    }

    /// Layer k's output, (T, B, D*H): the unit's h, or the [forward | backward] concatenation.
    private func layerOutput(_ k: Int) -> UnsafeMutablePointer<S> { D == 1 ? store[k].h.pointer : cat[k].pointer }

    /// The input of layer k in forward time order: (pointer, width) of a (T, B, width) matrix,
    /// after dropout; nil for one-hot token input.
    private func layerInputInOrder(_ k: Int) -> (UnsafeMutablePointer<S>, Int)? {
        if k > 0 { return (dropoutOn && spec.dropout > 0 ? dropped[k].pointer : layerOutput(k - 1), spec.layerOutputWidth) }
        if case .dense(let f) = spec.input { return (dense.pointer, f) }
        if let E = spec.embeddingSize { return (embedded.pointer, E) }
        return nil
    }

    /// The row of sample b's step t in its own reversed time: step lengths[b]-1-t. Each sample is
    /// reversed within its own length, so the backward unit starts at each sample's own end.
    @inline(__always) private func reversedRow(_ t: Int, _ b: Int) -> Int { offset[lengths[b] - 1 - t] + b }

    /// Each sample's rows of a packed (N, width) matrix in reversed time order into another
    /// (accumulate: added to it).
    private func reverseTime(_ x: UnsafePointer<S>, into y: UnsafeMutablePointer<S>, width: Int, accumulate: Bool = false) {
        for t in 0..<T {
            for b in 0..<rowsAt[t] {
                let from = x + (offset[t] + b) * width, to = y + reversedRow(t, b) * width
                if accumulate { for i in 0..<width { to[i] += from[i] } } else { to.update(from: from, count: width) }
            }
        }
    }

    /// The backward unit of layer k reads its input reversed in time (and so runs the same code).
    private func reverseInput(layer k: Int, tokens: UnsafePointer<Int32>?) {
        if let (x, width) = layerInputInOrder(k) {
            reverseTime(x, into: reversedInput.pointer, width: width)
        } else if let tokens {
            for t in 0..<T { for b in 0..<rowsAt[t] { reversedTokens[reversedRow(t, b)] = tokens[offset[t] + b] } }
        }
    }

    /// cat[k] (N, 2H) = [h_forward(t) | h_backward(t)], the backward unit's rows stored reversed.
    private func concatenate(layer k: Int) {
        let f = store[2 * k].h.pointer, r = store[2 * k + 1].h.pointer, out = cat[k].pointer
        for t in 0..<T {
            for b in 0..<rowsAt[t] {
                let row = offset[t] + b
                (out + row * 2 * H).update(from: f + row * H, count: H)
                (out + row * 2 * H + H).update(from: r + reversedRow(t, b) * H, count: H)
            }
        }
    }

    /// Where in the run a training pass is, for dropout's masks. The mask of an element is a
    /// function of (seed, step, global row, place, time step, unit) only, never of how the global
    /// batch is split over ranks, micro-batches or truncated-BPTT chunks, so any number of ranks
    /// trains the same model. Set before each training pass (the trainer does).
    public struct DropoutKey: Sendable {
        public var seed: UInt64, step: Int
        /// The global row of this batch's row 0 (unless the batch names its rows: Batch.rowKeys),
        /// and the time step of its step 0.
        public var rowOffset: Int, timeOffset: Int
        public init(seed: UInt64 = 0, step: Int = 0, rowOffset: Int = 0, timeOffset: Int = 0) {
            self.seed = seed; self.step = step; self.rowOffset = rowOffset; self.timeOffset = timeOffset
        }
    }
    public var dropoutKey = DropoutKey()
    private var rowKeys: [Int] = []  // the latest forward's Batch.rowKeys

    /// SplitMix64's finalizer (Steele et al. 2014): a bijective mix of 64 bits.
    @inline(__always) static func mix(_ z0: UInt64) -> UInt64 {
        var z = z0 &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Whether dropout keeps element (place, time step, global row, unit) of a step: a uniform
    /// number in [0, 1) from the key, compared with p.
    @inline(__always) public static func keeps(_ key: DropoutKey, place: Int, step t: Int, row: Int, unit: Int, p: Double) -> Bool {
        let prefix = mix(mix(mix(mix(key.seed ^ 0x64726f70) ^ UInt64(truncatingIfNeeded: key.step)) ^ UInt64(place)) ^ UInt64(t)) ^ UInt64(row)
        return Double(mix(mix(prefix) ^ UInt64(unit)) >> 11) * 0x1p-53 >= p
    }

    /// into = x * mask / (1 - p) over the rows of `width` units of every step (N rows, packed), or
    /// (`lastSteps`) over B rows, sample b's at its last step; keeps the factors for the backward
    /// pass. In place allowed.
    private func applyDropout(place: Int, p: Double, x: UnsafeMutablePointer<S>, into out: UnsafeMutablePointer<S>,
                              width: Int, lastSteps: Bool, steps: Range<Int>? = nil) {
        let factor = dropFactor[place].pointer
        let scale = S(1 / (1 - p)), key = dropoutKey
        let variational = spec.variationalDropout
        func row(_ r: Int, step: Int, sample b: Int) {
            let t = variational ? 0 : key.timeOffset + step, id = rowKeys.isEmpty ? key.rowOffset + b : rowKeys[b]
            for j in 0..<width {
                let f: S = Self.keeps(key, place: place, step: t, row: id, unit: j, p: p) ? scale : 0
                factor[r * width + j] = f
                out[r * width + j] = x[r * width + j] * f
            }
        }
        if lastSteps {
            for b in 0..<B { row(b, step: lengths[b] - 1, sample: b) }
        } else {
            for t in steps ?? 0..<T { for b in 0..<rowsAt[t] { row(offset[t] + b, step: t, sample: b) } }
        }
    }

    /// The factors of dropout place `place` in the latest training forward, (rows, width) (tests).
    func dropoutFactors(place: Int) -> [S] { dropFactor[place].array }

    /// The backward twin of applyDropout: d (rows, width) times the factors of `place` from row
    /// `from` on, in place.
    private func dropoutBackward(place: Int, _ d: UnsafeMutablePointer<S>, rows: Int, width: Int, from: Int = 0) {
        let factor = dropFactor[place].pointer + from * width
        for i in 0..<(rows * width) { d[i] *= factor[i] }
    }

    private func setInitialState(_ given: UnsafePointer<S>?) {
        let n = spec.units * C * B * H
        initialStateGiven = given != nil
        if let given {
            state0.pointer.update(from: given, count: n)
            return
        }
        state0.pointer.update(repeating: 0, count: n)
        for k in 0..<spec.units {
            let l = layout.layer(k)
            for c in 0..<2 {
                guard let view = c == 0 ? l.h0 : l.c0 else { continue }
                for b in 0..<B { (s0(k, c) + b * H).update(from: p(view), count: H) }
            }
        }
    }

    /// The input of unit v in its own time order: (pointer, width) of a (T, B, width) matrix; nil
    /// for one-hot token input. A backward unit's is the reversed copy `reverseInput` made.
    private func layerInput(_ v: Int) -> (UnsafeMutablePointer<S>, Int)? {
        guard let (x, width) = layerInputInOrder(v / D) else { return nil }
        return v % D == 1 ? (reversedInput.pointer, width) : (x, width)
    }

    /// Layer k over steps `steps` (all by default). Pre-activations of these steps: X W_ih^T + b_ih
    /// (+ b_hh for Elman and LSTM), then per step the recurrent product and the cell's elementwise step.
    private func forwardLayer(_ k: Int, tokens: UnsafePointer<Int32>?, steps: Range<Int>? = nil) {
        let l = layout.layer(k)
        let st = store[k]
        let steps = steps ?? 0..<T
        let r0 = offset[steps.lowerBound], TB = offset[steps.upperBound] - r0  // this chunk's rows
        let GH = G * H
        // Elman keeps its pre-activations in h (activated in place); gated cells in `gates`.
        let z = (spec.cell == .rnn ? st.h.pointer : st.gates.pointer) + r0 * GH  // (rows, G*H)
        // The biases first and the input's contribution added to them (one pass over z less),
        // except under batch norm, which normalizes X W_ih^T before its biases. A token input
        // without batch norm is gathered step by step in the loop below, just before the product
        // adds to the same rows, so that they are still in cache for it and for the cell (the
        // whole (N, G*H) gather up front left them in L3 or memory: gru-h512's 25 MB).
        let bhh = spec.cell == .gru ? nil : p(l.bhh)
        var tokensPerStep: Int?  // V, when the gather is per step
        if let (x, width) = layerInput(k) {
            if !spec.batchNorm { S.setBiasRows(z, rows: TB, cols: GH, p(l.bih), bhh) }
            S.gemm(transA: false, transB: true, m: TB, n: GH, k: width, alpha: 1, a: x + r0 * width, lda: width,
                   b: p(l.wih), ldb: width, beta: spec.batchNorm ? 0 : 1, c: z, ldc: GH)
        } else {
            guard case .tokens(let V) = spec.input else { preconditionFailure() }
            if spec.batchNorm {
                z.update(repeating: 0, count: TB * GH)  // the gather adds
                S.gatherColumns(p(l.wih), ldw: V, cols: GH, tokens: tokens! + r0, rows: TB, into: z, table: tokenTableOrNil, filled: false)
            } else {
                tokensPerStep = V
            }
        }
        if spec.batchNorm {
            precondition(TB == N, "batch norm needs the whole sequence in one chunk")
            batchNormForward(k, z)
            S.addBiasRows(z, rows: TB, cols: GH, p(l.bih), bhh)
        }
        if steps.lowerBound == 0 {
            packedWhh[k] = S.packRecurrent(p(l.whh), gatesTimesHidden: GH, hidden: H, reuse: packedWhh[k])
        }
        let packed = packedWhh[k]
        let z0 = z - r0 * GH  // row 0 of the whole (N, G*H) buffer
        // Step t computes its Bt rows only; their previous state is the first Bt rows of step t-1
        // (the samples are sorted longest first).
        for t in steps {
            let Bt = rowsAt[t], r = offset[t]  // step t: rows r..<r+Bt
            let hPrev = t > 0 ? st.h.pointer + offset[t - 1] * H : s0(k, 0)  // (Bt, H)
            let zt = z0 + r * GH  // (Bt, G*H)
            let product = t > 0 || !zeroInitialH(k)  // h_{-1} = 0 adds nothing
            if let V = tokensPerStep {  // z's rows of step t: biases + W_ih's token columns
                S.setBiasRows(zt, rows: Bt, cols: GH, p(l.bih), bhh)
                S.gatherColumns(p(l.wih), ldw: V, cols: GH, tokens: tokens! + r, rows: Bt, into: zt, table: tokenTableOrNil,
                                filled: t != steps.lowerBound)
            }
            stepsComputed += Bt
            if t % 8 == 0 { pipe?.progress() }
            switch spec.cell {
            case .rnn:
                if product { S.recurrentForward(packed, w: p(l.whh), hPrev: hPrev, rows: Bt, gatesTimesHidden: H, hidden: H, into: zt) }
                if spec.layerNorm { layerNormStep(k, t, zt) }
                S.activationForward(spec.activation, slope: slope, zt, Bt * H)
            case .lstm:
                if product { S.recurrentForward(packed, w: p(l.whh), hPrev: hPrev, rows: Bt, gatesTimesHidden: GH, hidden: H, into: zt) }
                if spec.layerNorm { layerNormStep(k, t, zt) }
                let cPrev = t > 0 ? st.cell.pointer + offset[t - 1] * H : s0(k, 1)
                S.lstmForward(gates: zt, cPrev: cPrev, c: st.cell.pointer + r * H, h: st.h.pointer + r * H,
                              rows: Bt, hidden: H)
            case .gru:
                for b in 0..<Bt { (hh.pointer + b * GH).update(from: p(l.bhh), count: GH) }
                if product { S.recurrentForward(packed, w: p(l.whh), hPrev: hPrev, rows: Bt, gatesTimesHidden: GH, hidden: H, into: hh.pointer) }
                if spec.layerNorm {
                    S.gruForwardLN(gates: zt, hh: hh.pointer, hPrev: hPrev, h: st.h.pointer + r * H, hn: st.hn.pointer + r * H,
                                   rows: Bt, hidden: H, gamma: p(l.lnWeight!), beta: p(l.lnBias!),
                                   xhat: st.lnHat.pointer + r * GH, rstd: st.lnRstd.pointer + r * G)
                } else {
                    S.gruForward(gates: zt, hh: hh.pointer, hPrev: hPrev, h: st.h.pointer + r * H,
                                 hn: st.hn.pointer + r * H, rows: Bt, hidden: H)
                }
            }
        }
    }

    /// Layer norm of step t's gate pre-activations (Bt, G*H), one block per gate and sample.
    private func layerNormStep(_ k: Int, _ t: Int, _ zt: UnsafeMutablePointer<S>) {
        let l = layout.layer(k), st = store[k], r = offset[t]
        S.layerNormForward(zt, rows: rowsAt[t], blocks: G, hidden: H, gamma: p(l.lnWeight!), beta: p(l.lnBias!),
                           xhat: st.lnHat.pointer + r * G * H, rstd: st.lnRstd.pointer + r * G)
    }

    /// Batch norm of layer k's input projection z (N, G*H), in place, before the biases: the
    /// statistics of valid rows only (the packed layout has no others).
    /// Training: statistics of the global batch (one reduction of the column sums across ranks);
    /// evaluation: the running statistics.
    private func batchNormForward(_ k: Int, _ z: UnsafeMutablePointer<S>) {
        let l = layout.layer(k)
        let GH = G * H, rows = N
        let mean = bnStats.pointer + 2 * k * GH, rstd = mean + GH  // (G*H) each
        if training {
            let sums = bnSums.pointer  // sum (G*H), sum of squares (G*H), rows
            bnSums.zero()
            S.columnMoments(z, rows: rows, cols: GH, sum: sums, sumsq: sums + GH)
            sums[2 * GH] = Double(rows)
            reduceAcrossRanks?(bnSums.buffer)
            let n = sums[2 * GH]
            let m = Self.batchNormMomentum
            for j in 0..<GH {
                mean[j] = sums[j] / n
                let variance = max(sums[GH + j] / n - mean[j] * mean[j], 0)
                rstd[j] = 1 / (variance + Kernels.normEps).squareRoot()
                let rm = (2 * k) * GH + j, rv = (2 * k + 1) * GH + j
                let unbiased = variance * n / max(n - 1, 1)
                if deferredStatistics != nil {
                    deferredStatistics![rm] += mean[j]
                    deferredStatistics![rv] += unbiased
                } else {
                    runningStatistics[rm] = S((1 - m) * Double(runningStatistics[rm]) + m * mean[j])
                    runningStatistics[rv] = S((1 - m) * Double(runningStatistics[rv]) + m * unbiased)
                }
            }
            if k == 0 && deferredStatistics != nil { deferredStatistics![spec.units * 2 * GH] += 1 }
        } else {
            for j in 0..<GH {
                mean[j] = Double(runningStatistics[(2 * k) * GH + j])
                rstd[j] = 1 / (Double(runningStatistics[(2 * k + 1) * GH + j]) + Kernels.normEps).squareRoot()
            }
        }
        S.batchNormApply(z, rows: rows, cols: GH, mean: mean, rstd: rstd, gamma: p(l.bnWeight!), beta: p(l.bnBias!),
                         xhat: store[k].bnHat.pointer)
    }

    /// An empty buffer for `deferredStatistics`: (L, 2, G*H) statistics and a count.
    public func emptyDeferredStatistics() -> [Double] { [Double](repeating: 0, count: runningStatistics.count + 1) }

    /// Moves the running statistics once with the mean of deferred batch statistics `sums` (a
    /// `deferredStatistics` buffer summed over micro-shards): running = (1 - 0.1) running + 0.1 mean.
    public func updateRunningStatistics(_ sums: [Double]) {
        let n = sums[runningStatistics.count]
        guard n > 0 else { return }
        let m = Self.batchNormMomentum
        for i in 0..<runningStatistics.count {
            runningStatistics[i] = S((1 - m) * Double(runningStatistics[i]) + m * sums[i] / n)
        }
    }

    /// The backward twin of batchNormForward (training statistics): dz (N, G*H), the gradient
    /// w.r.t. the normalized output, becomes the gradient w.r.t. the projection, in place.
    private func batchNormBackward(_ k: Int, _ dz: UnsafeMutablePointer<S>) {
        let l = layout.layer(k)
        let GH = G * H, rows = N
        let hat = store[k].bnHat.pointer
        // Local parameter gradients (summed across ranks with the rest of the gradient).
        let sums = bnSums.pointer  // sum dy (G*H), sum dy * xhat (G*H), rows
        bnSums.zero()
        S.batchNormBackwardSums(dz, xhat: hat, rows: rows, cols: GH, sumDy: sums, sumDyXhat: sums + GH)
        let dBeta = g(l.bnBias!), dGamma = g(l.bnWeight!)
        for j in 0..<GH {
            dBeta[j] += S(sums[j])
            dGamma[j] += S(sums[GH + j])
        }
        sums[2 * GH] = Double(rows)
        reduceAcrossRanks?(bnSums.buffer)
        // The sums become the means, in place.
        let n = sums[2 * GH]
        for j in 0..<(2 * GH) { sums[j] /= n }
        S.batchNormBackwardApply(dz, xhat: hat, rows: rows, cols: GH, gamma: p(l.bnWeight!), rstd: bnStats.pointer + (2 * k + 1) * GH,
                                 meanDy: sums, meanDyXhat: sums + GH)
    }

    /// head (rows, O) = h_top W^T + b over every step or the last step.
    private func forwardHead() {
        let input = headInput(), W = spec.layerOutputWidth
        // The bias first, then the product added to it (beta 1): one pass over the output less.
        S.setBiasRows(head.pointer, rows: headRows, cols: O, p(layout.headBias), nil)
        S.gemm(transA: false, transB: true, m: headRows, n: O, k: W, alpha: 1, a: input, lda: W,
               b: p(layout.headWeight), ldb: W, beta: 1, c: head.pointer, ldc: O)
    }

    /// The head's input (headRows, D*H): the top layer's output at every step or the last, after
    /// head dropout in a training pass (computed by the forward's call, read back by the backward's).
    private func headInput(forward: Bool = true) -> UnsafeMutablePointer<S> {
        let top = layerOutput(spec.layers - 1), W = spec.layerOutputWidth
        var input = top
        if spec.output == .lastStep {
            if ragged || D == 2 {
                // Each sample's state after its own last step (PyTorch's h_n): for a backward unit
                // that is after input step 0, its own last step, at the same row of its reversed
                // time. Gathered by the forward; (B, D*H).
                for b in 0..<B where forward {
                    let row = offset[lengths[b] - 1] + b
                    for d in 0..<D {
                        (lastTop.pointer + b * W + d * H).update(from: store[(spec.layers - 1) * D + d].h.pointer + row * H, count: H)
                    }
                }
                input = lastTop.pointer
            } else {
                input = top + offset[T - 1] * W  // step T-1's rows are samples 0..<B
            }
        }
        guard dropoutOn && spec.headDropout > 0 else { return input }
        let out = dropped[spec.layers].pointer
        if forward {
            applyDropout(place: spec.layers, p: spec.headDropout, x: input, into: out, width: W, lastSteps: spec.output == .lastStep)
        }
        return out
    }

    /// Copies each sample's state after its last step in the latest forward, (L, C, B, H), into `out`.
    public func finalState(into out: UnsafeMutablePointer<S>) {
        for k in 0..<spec.units {
            guard inStage(unit: k) else {  // another stage's layer: zeros, so states of stages add
                (out + k * C * B * H).update(repeating: 0, count: C * B * H)
                continue
            }
            for b in 0..<B {
                let row = offset[lengths[b] - 1] + b
                (out + (k * C * B + b) * H).update(from: store[k].h.pointer + row * H, count: H)
                if spec.cell == .lstm {
                    (out + ((k * C + 1) * B + b) * H).update(from: store[k].cell.pointer + row * H, count: H)
                }
            }
        }
    }

    /// Layer k's outputs h_t after `forward`, (N, H): (T, B, H) packed.
    public func hiddenStates(layer k: Int) -> UnsafeBufferPointer<S> {
        UnsafeBufferPointer(start: store[k].h.pointer, count: N * H)
    }

    /// Layer k's gate activations after `forward`, (N, G*H); empty for Elman.
    public func gateActivations(layer k: Int) -> UnsafeBufferPointer<S> {
        UnsafeBufferPointer(start: store[k].gates.pointer, count: spec.cell == .rnn ? 0 : N * G * H)
    }

    // MARK: loss

    /// Forward pass and loss terms, without gradients (evaluation).
    /// - batchStatistics: the forward of a training pass (batch norm with this batch's statistics,
    ///   without updating the running ones; dropout with `dropoutKey`'s masks), for gradient
    ///   checks; default: evaluation (running statistics, no dropout).
    public func loss(_ batch: Batch, initialState: UnsafePointer<S>? = nil, batchStatistics: Bool = false) -> LossStats {
        if batchStatistics {  // as a training pass (dropout too), the running statistics left alone
            let saved = runningStatistics.array
            forward(batch, initialState: initialState, training: true)
            for (i, v) in saved.enumerated() { runningStatistics[i] = v }
        } else {
            forward(batch, initialState: initialState)
        }
        return applyLoss(batch, scale: 0)
    }

    /// The loss terms of the latest `forward(batch)`, read from the head's outputs (which it then
    /// overwrites): for callers that also need the outputs themselves, without a second forward.
    public func lossOfLastForward(_ batch: Batch) -> LossStats {
        applyLoss(batch, scale: 0)
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
            return LossStats(sum: r.loss, count: rows, correct: r.correct, steps: N)
        case .mse:
            precondition(batch.targetValues.count == rows * O, "value targets must be (T, B, O) or (B, O)")
            let s = batch.targetValues.withUnsafeBufferPointer {
                S.meanSquaredError(head.pointer, targets: $0.baseAddress!, rows: rows, width: O, scale: scale)
            }
            return LossStats(sum: s, count: rows, steps: N)
        }
    }

    // MARK: backward

    /// Forward, loss, and backpropagation through time. Adds d(sum of loss terms)/d(parameters)
    /// into `gradients` (zero it first for a fresh step) and returns the loss sums.
    @discardableResult
    public func lossAndGradient(_ batch: Batch, initialState: UnsafePointer<S>? = nil) -> LossStats {
        forward(batch, initialState: initialState, training: true)
        // A stage without the head has no loss terms; it counts the steps it computed.
        let stats = isLastStage ? applyLoss(batch, scale: 1) : LossStats(sum: 0, count: 0, steps: N)
        if D == 1 {
            batch.tokens.withUnsafeBufferPointer { backwardChunks(tokens: $0.baseAddress, learnState: initialState == nil) }
        } else {
            backwardBidirectional(batch, learnState: initialState == nil)
        }
        return stats
    }

    /// The gradient with respect to the initial state of the latest backward, (L, C, B, H).
    public var initialStateGradient: UnsafeBufferPointer<S> {
        UnsafeBufferPointer(start: dState0.pointer, count: spec.units * C * B * H)
    }

    /// Head: dW += dOut^T h, db += sum dOut, and dL/d(head input) = dOut W into `dTop`, (rows, D*H),
    /// then through head dropout.
    private func backwardHead(into dTop: UnsafeMutablePointer<S>) {
        let input = headInput(forward: false), W = spec.layerOutputWidth
        S.gemm(transA: true, transB: false, m: O, n: W, k: headRows, alpha: 1, a: head.pointer, lda: O,
               b: input, ldb: W, beta: 1, c: g(layout.headWeight), ldc: W)
        S.sumRows(head.pointer, rows: headRows, cols: O, into: g(layout.headBias))
        onGradientsFinal?(layout.headFinalOffset)
        // dTop = dOut W_head through the packed kernel: it beat sgemm at this shape (k = O, one
        // K block) by 12-20% for D*H = 128...1024 (BENCHMARKS.md), and packing the (O, D*H) W_head
        // costs microseconds.
        packedHead = S.packRecurrent(p(layout.headWeight), gatesTimesHidden: O, hidden: W, reuse: packedHead)
        S.recurrentBackward(packedHead, w: p(layout.headWeight), dz: head.pointer, rows: headRows, gatesTimesHidden: O, hidden: W,
                            into: dTop, accumulate: false)
        if dropoutOn && spec.headDropout > 0 { dropoutBackward(place: spec.layers, dTop, rows: headRows, width: W) }
    }

    /// The backward twin of forwardChunks (one direction): the head (last stage) or the stage
    /// above's dL/dh, then the chunks from the last, each through the stage's layers from the
    /// top: the sweep of its steps, then dL/d(layer input) of its rows, which becomes the layer
    /// below's dL/dh (through dropout), or is sent to the stage below, or (layer 0) goes into the
    /// embedding's rows. After a layer's first chunk (its sweep complete), its weight gradients,
    /// one product each.
    private func backwardChunks(tokens: UnsafePointer<Int32>?, learnState: Bool) {
        let k0 = stageLayers.lowerBound, top = stageLayers.upperBound - 1, W = spec.layerOutputWidth
        let perLayer = chunkCount > 1
        // Layer k's dL/dh and dz: its own buffers with several chunks, else shared in turn.
        let slot = { (k: Int) -> Int in perLayer ? k - k0 : k % self.layerDelta.count }
        for k in stageLayers where perLayer || k == top { layerDelta[slot(k)].pointer.update(repeating: 0, count: N * H) }
        if isLastStage {
            if spec.output == .lastStep {
                backwardHead(into: dHead.pointer)
                let d = layerDelta[slot(top)].pointer
                for b in 0..<B { (d + (offset[lengths[b] - 1] + b) * H).update(from: dHead.pointer + b * W, count: H) }
            } else {
                backwardHead(into: layerDelta[slot(top)].pointer)
            }
        }
        dState0.pointer.update(repeating: 0, count: spec.units * C * B * H)
        if collectDiagnostics {  // every element of the stage's layers is written below
            if dhNormSquares.count != spec.units * T { dhNormSquares = [Double](repeating: 0, count: spec.units * T) }
            if stageLayers.count < spec.layers { for i in dhNormSquares.indices { dhNormSquares[i] = 0 } }
        }
        for c in stride(from: chunkCount - 1, through: 0, by: -1) {
            let steps = chunk(c), r = rows(steps), n = r.count
            if !isLastStage {  // the stage above's dL/dh of this chunk, added to what later steps gave
                let into = received.pointer + r.lowerBound * H
                pipe!.receiveGradient(c, UnsafeMutableBufferPointer(start: into, count: n * H))
                S.axpy(n: n * H, alpha: 1, x: into, y: layerDelta[slot(top)].pointer + r.lowerBound * H)
            }
            for k in stageLayers.reversed() {
                let dz = dzBuffer(k, slot: slot(k)), dU = dUBuffer(k, slot: slot(k))
                sweep(k, steps, d: layerDelta[slot(k)].pointer, dz: dz, dU: dU)
                if c == 0 {
                    recurrentWeightGradients(k, dz: dz, dU: dU)
                    if learnState { accumulateInitialStateGradient(k) }
                }
                // dL/d(input) of this chunk's rows: to the layer below, the stage below, or the embedding.
                if let (_, width) = layerInput(k), k > 0 || spec.embeddingSize != nil {
                    let dx = (k == 0 ? dEmbedded.pointer : dInput.pointer) + r.lowerBound * width
                    S.gemm(transA: false, transB: false, m: n, n: width, k: G * H, alpha: 1, a: dz + r.lowerBound * G * H, lda: G * H,
                           b: p(layout.layer(k).wih), ldb: width, beta: 0, c: dx, ldc: width)
                    let rate = k == 0 ? spec.inputDropout : spec.dropout
                    if dropoutOn && rate > 0 { dropoutBackward(place: k, dx, rows: n, width: width, from: r.lowerBound) }
                    if k > k0 {
                        if !perLayer && c == chunkCount - 1 { layerDelta[slot(k - 1)].pointer.update(repeating: 0, count: N * H) }
                        S.axpy(n: n * width, alpha: 1, x: dx, y: layerDelta[slot(k - 1)].pointer + r.lowerBound * width)
                    } else if k > 0 {
                        pipe!.sendGradient(c, UnsafeBufferPointer(start: dx, count: n * width))
                    } else {
                        addToEmbeddingRows(dEmbedded.pointer, rows: r, tokens: tokens!)
                    }
                }
                if c == 0 {
                    inputWeightGradient(k, dz: dz, tokens: tokens)
                    onGradientsFinal?(k == 0 ? 0 : layout.layer(k).wih.offset)  // layer 0: the embedding too
                }
            }
        }
        pipe?.flush()
    }

    /// The embedding's gradient rows of the tokens at packed rows `rows` += dL/d(embedded row),
    /// in row order; d is (N, E).
    private func addToEmbeddingRows(_ d: UnsafePointer<S>, rows: Range<Int>, tokens: UnsafePointer<Int32>) {
        let E = spec.embeddingSize!, dw = g(layout.embedding!)
        for row in rows { S.axpy(n: E, alpha: 1, x: d + row * E, y: dw + Int(tokens[row]) * E) }
    }

    /// Where unit k's backward keeps dz, the gradients of its input-side pre-activations, and
    /// dU, of its hidden-side ones, (T, B, G*H); for Elman dz is dL/dh itself, for LSTM dU is dz.
    private func dzBuffer(_ k: Int, slot: Int) -> UnsafeMutablePointer<S> {
        if spec.cell == .rnn { return D == 1 ? layerDelta[slot].pointer : delta[k % D].pointer }
        return D == 1 ? layerDz[min(slot, layerDz.count - 1)].pointer : dxi.pointer
    }
    private func dUBuffer(_ k: Int, slot: Int) -> UnsafeMutablePointer<S> {
        guard spec.cell == .gru else { return dzBuffer(k, slot: slot) }
        return D == 1 ? layerDhh[min(slot, layerDhh.count - 1)].pointer : dhh.pointer
    }

    /// The backward pass of a bidirectional network: per layer from the top, both units over the
    /// whole sequence (the backward unit in its own reversed time), their input gradients added.
    private func backwardBidirectional(_ batch: Batch, learnState: Bool) {
        let TB = N, W = spec.layerOutputWidth
        // dL/d(head input), (rows, 2H): for every_step into the scratch that is then split between
        // the two units; for last_step into (B, 2H), then to each unit's row of each sample's last
        // step (zero elsewhere).
        let dTop = spec.output == .lastStep ? dHead.pointer : dLayerInput.pointer
        backwardHead(into: dTop)
        if spec.output == .lastStep {
            for d in 0..<D {
                delta[d].pointer.update(repeating: 0, count: N * H)
                for b in 0..<B { (delta[d].pointer + (offset[lengths[b] - 1] + b) * H).update(from: dTop + b * W + d * H, count: H) }
            }
        } else {
            split(dTop, into: delta)
        }
        dState0.pointer.update(repeating: 0, count: spec.units * C * B * H)
        // Every element is written below; reallocated only when T changes.
        if collectDiagnostics && dhNormSquares.count != spec.units * T { dhNormSquares = [Double](repeating: 0, count: spec.units * T) }
        batch.tokens.withUnsafeBufferPointer { tokens in
            for k in stride(from: spec.layers - 1, through: 0, by: -1) {
                // Where dL/d(layer input) goes: the layer below's dL/dh, or the embedding rows'.
                let below: (UnsafeMutablePointer<S>, Int)? = k > 0 ? (dLayerInput.pointer, W)
                    : spec.embeddingSize.map { (dEmbedded.pointer, $0) }
                backwardLayer(k * D, tokens: tokens.baseAddress, inputGradient: below?.0)
                reverseInput(layer: k, tokens: tokens.baseAddress)
                let reversed = reversedTokens.withUnsafeBufferPointer { $0.baseAddress }
                backwardLayer(k * D + 1, tokens: reversed, inputGradient: below == nil ? nil : dUnitInput.pointer)
                if let (dx, width) = below { reverseTime(dUnitInput.pointer, into: dx, width: width, accumulate: true) }
                if learnState { for d in 0..<D { accumulateInitialStateGradient(k * D + d) } }
                if k > 0 {
                    if dropoutOn && spec.dropout > 0 { dropoutBackward(place: k, below!.0, rows: TB, width: W) }
                    split(dLayerInput.pointer, into: deltaBelow)
                } else if let (dx, width) = below, layout.embedding != nil {  // into the token rows
                    if dropoutOn && spec.inputDropout > 0 { dropoutBackward(place: 0, dx, rows: TB, width: width) }
                    addToEmbeddingRows(dx, rows: 0..<TB, tokens: tokens.baseAddress!)
                }
                onGradientsFinal?(k == 0 ? 0 : layout.layer(k * D).wih.offset)  // layer 0: the embedding too
                if k > 0 { swap(&delta, &deltaBelow) }
            }
        }
    }

    /// The twin of concatenate: d (N, 2H) into the forward unit's (N, H) and the backward
    /// unit's, reversed in time.
    private func split(_ d: UnsafePointer<S>, into out: [Buffer<S>]) {
        for t in 0..<T {
            for b in 0..<rowsAt[t] {
                let row = offset[t] + b
                (out[0].pointer + row * H).update(from: d + row * 2 * H, count: H)
                (out[1].pointer + reversedRow(t, b) * H).update(from: d + row * 2 * H + H, count: H)
            }
        }
    }

    /// The backward twin of forwardLayer (the bidirectional path, whole sequence). On entry
    /// `delta` holds dL/dh of unit k (T, B, H) from above; fills dState0 for unit k.
    /// - inputGradient: where dL/d(this unit's input) = dz W_ih goes, (T, B, width), overwritten;
    ///   nil: not needed (layer 0 without an embedding).
    private func backwardLayer(_ k: Int, tokens: UnsafePointer<Int32>?, inputGradient: UnsafeMutablePointer<S>?) {
        let dz = dzBuffer(k, slot: 0), dU = dUBuffer(k, slot: 0)
        sweep(k, 0..<T, d: delta[k % D].pointer, dz: dz, dU: dU)
        recurrentWeightGradients(k, dz: dz, dU: dU)
        inputWeightGradient(k, dz: dz, tokens: tokens)
        if let dx = inputGradient, let (_, width) = layerInput(k) {  // dL/d(input) = dz W_ih; the caller takes it through dropout and on
            S.gemm(transA: false, transB: false, m: N, n: width, k: G * H, alpha: 1, a: dz, lda: G * H,
                   b: p(layout.layer(k).wih), ldb: width, beta: 0, c: dx, ldc: width)
        }
    }

    /// The sweep of unit k over steps `steps`, from the last: d (N, H) holds dL/dh from above
    /// (complete for step t once step t+1 has added its share); each step's dL/dh becomes dz and
    /// dU there (in place for Elman), and dU_t W_hh is added into dL/dh_{t-1} (the first B_t rows
    /// of step t-1, or dState0 before step 0). LSTM's dc is carried from chunk to chunk.
    private func sweep(_ k: Int, _ steps: Range<Int>, d: UnsafeMutablePointer<S>, dz: UnsafeMutablePointer<S>, dU: UnsafeMutablePointer<S>) {
        let l = layout.layer(k)
        let st = store[k]
        let GH = G * H
        let dc = self.dc[k].pointer  // (B, H)
        if spec.cell == .lstm && steps.upperBound == T { dc.update(repeating: 0, count: B * H) }
        let packed = packedWhh[k]  // packed by this layer's forward, with the same parameters
        // Step t's Bt rows; the rows of samples that end at step t start their sweep there, with
        // the LSTM's dc still zero (no later step touched them).
        for t in steps.reversed() {
            let Bt = rowsAt[t], r = offset[t]
            let dht = d + r * H  // dL/dh_t, complete once step t+1 has added its share
            let dPrev = t > 0 ? d + offset[t - 1] * H : ds0(k, 0)  // where dL/dh_{t-1} accumulates (its first Bt rows)
            let hPrev = t > 0 ? st.h.pointer + offset[t - 1] * H : s0(k, 0)
            stepsComputed += Bt
            if collectDiagnostics { dhNormSquares[k * T + t] = S.sumOfSquares(dht, Bt * H) }
            if t % 8 == 0 { onProgress?(); pipe?.progress() }
            switch spec.cell {
            case .rnn:
                S.activationBackward(spec.activation, slope: slope, y: st.h.pointer + r * H, d: dht, Bt * H)
                if spec.layerNorm { layerNormStepBackward(k, t, dht) }
            case .lstm:
                let cPrev = t > 0 ? st.cell.pointer + offset[t - 1] * H : s0(k, 1)
                S.lstmBackward(dh: dht, dc: dc, gates: st.gates.pointer + r * GH, c: st.cell.pointer + r * H,
                               cPrev: cPrev, dz: dz + r * GH, rows: Bt, hidden: H)
                if spec.layerNorm { layerNormStepBackward(k, t, dz + r * GH) }
            case .gru:
                if spec.layerNorm {
                    S.gruBackwardLN(dh: dht, gates: st.gates.pointer + r * GH, hn: st.hn.pointer + r * H, hPrev: hPrev,
                                    dxi: dz + r * GH, dhh: dU + r * GH, dhPrev: dPrev, rows: Bt, hidden: H,
                                    gamma: p(l.lnWeight!), xhat: st.lnHat.pointer + r * GH, rstd: st.lnRstd.pointer + r * G,
                                    dgamma: g(l.lnWeight!), dbeta: g(l.lnBias!))
                } else {
                    S.gruBackward(dh: dht, gates: st.gates.pointer + r * GH, hn: st.hn.pointer + r * H, hPrev: hPrev,
                                  dxi: dz + r * GH, dhh: dU + r * GH, dhPrev: dPrev, rows: Bt, hidden: H)
                }
            }
            // dL/dh_{t-1} += dU_t W_hh
            S.recurrentBackward(packed, w: p(l.whh), dz: dU + r * GH, rows: Bt, gatesTimesHidden: GH, hidden: H, into: dPrev, accumulate: true)
        }
        if spec.cell == .lstm && steps.lowerBound == 0 { ds0(k, 1).update(from: dc, count: B * H) }
    }

    /// After unit k's sweep of every step: dW_hh += sum_t dU_t^T h_{t-1} and the bias gradients,
    /// then batch norm's backward, which turns dz into the gradient w.r.t. the input projection.
    private func recurrentWeightGradients(_ k: Int, dz: UnsafeMutablePointer<S>, dU: UnsafeMutablePointer<S>) {
        let l = layout.layer(k)
        let st = store[k]
        let GH = G * H
        // Equal lengths: one product over steps 1..T-1, one for step 0's h_{-1} (none when it is zero). Ragged: h_{t-1}
        // copied beside every row of step t, then one product.
        if ragged {
            let hp = hPrevRows.pointer  // (N, H)
            for t in 0..<T {
                let from = t > 0 ? st.h.pointer + offset[t - 1] * H : s0(k, 0)
                (hp + offset[t] * H).update(from: from, count: rowsAt[t] * H)
            }
            S.gemm(transA: true, transB: false, m: GH, n: H, k: N, alpha: 1, a: dU, lda: GH,
                   b: hp, ldb: H, beta: 1, c: g(l.whh), ldc: H)
        } else {
            if T > 1 {
                S.gemm(transA: true, transB: false, m: GH, n: H, k: (T - 1) * B, alpha: 1, a: dU + B * GH, lda: GH,
                       b: st.h.pointer, ldb: H, beta: 1, c: g(l.whh), ldc: H)
            }
            if !zeroInitialH(k) {
                S.gemm(transA: true, transB: false, m: GH, n: H, k: B, alpha: 1, a: dU, lda: GH,
                       b: s0(k, 0), ldb: H, beta: 1, c: g(l.whh), ldc: H)
            }
        }
        S.sumRows(dz, rows: N, cols: GH, into: g(l.bih))
        S.sumRows(dU, rows: N, cols: GH, into: g(l.bhh))
        // From here on only the input side is needed (for Elman and LSTM dz and dU are one buffer).
        if spec.batchNorm { batchNormBackward(k, dz) }
    }

    /// dW_ih += dz^T X over every step (a scatter-add of columns for token input).
    private func inputWeightGradient(_ k: Int, dz: UnsafeMutablePointer<S>, tokens: UnsafePointer<Int32>?) {
        let l = layout.layer(k), GH = G * H
        if let (x, width) = layerInput(k) {
            S.gemm(transA: true, transB: false, m: GH, n: width, k: N, alpha: 1, a: dz, lda: GH,
                   b: x, ldb: width, beta: 1, c: g(l.wih), ldc: width)
        } else {
            guard case .tokens(let V) = spec.input else { preconditionFailure() }
            S.scatterAddColumns(dz, rows: N, cols: GH, tokens: tokens!, into: g(l.wih), ldw: V, table: tokenTableOrNil)
        }
    }

    /// The backward twin of layerNormStep: d (Bt, G*H) w.r.t. the normalized pre-activations
    /// becomes the gradient w.r.t. the raw ones, in place.
    private func layerNormStepBackward(_ k: Int, _ t: Int, _ d: UnsafeMutablePointer<S>) {
        let l = layout.layer(k), st = store[k], r = offset[t]
        S.layerNormBackward(d, rows: rowsAt[t], blocks: G, hidden: H, xhat: st.lnHat.pointer + r * G * H,
                            rstd: st.lnRstd.pointer + r * G, gamma: p(l.lnWeight!), dgamma: g(l.lnWeight!), dbeta: g(l.lnBias!))
    }

    /// A learned initial state is shared by every sample: its gradient is the sum over the batch.
    private func accumulateInitialStateGradient(_ k: Int) {
        let l = layout.layer(k)
        for c in 0..<2 {
            guard let view = c == 0 ? l.h0 : l.c0 else { continue }
            S.sumRows(ds0(k, c), rows: B, cols: H, into: g(view))
        }
    }

    // MARK: gradient normalization

    /// Turns the summed gradient of the global batch into the gradient of the objective (see the
    /// type's documentation): divide by the global number of samples, or where averaging over
    /// time by their time steps summed, `globalSteps` (B*T for equal lengths; for every_step the
    /// number of loss terms, so the result is the mean over valid terms whatever the lengths).
    public func normalizeGradients(globalSamples: Int, globalSteps: Int) {
        let perSample = 1 / S(globalSamples)
        let overTime = spec.averageOverTime ? 1 / S(globalSteps) : perSample
        switch spec.output {
        case .everyStep:
            S.scale(n: gradients.count, alpha: overTime, x: gradients.pointer)
        case .lastStep:
            // This stage's part of [0, recurrentCount): the recurrent layers (and the embedding).
            let recurrent = min(max(layout.recurrentCount - stageBase, 0), gradients.count)
            S.scale(n: recurrent, alpha: overTime, x: gradients.pointer)
            S.scale(n: gradients.count - recurrent, alpha: perSample, x: gradients.pointer + recurrent)
        }
    }

    /// The same for samples of `steps` steps each.
    public func normalizeGradients(globalSamples: Int, steps: Int) {
        normalizeGradients(globalSamples: globalSamples, globalSteps: globalSamples * steps)
    }
}
