/// One named tensor inside the flat parameter buffer: elements [offset, offset + count), row-major
/// with the given shape. Names and shapes are PyTorch's (`nn.RNN`/`nn.LSTM`/`nn.GRU` under the
/// prefix `rnn.`, `nn.Linear` under `head.`), so a state dict loads unchanged.
public struct ParamView: Equatable, Sendable {
    public let name: String
    public let offset: Int
    public let shape: [Int]
    public var count: Int { shape.reduce(1, *) }
    public var range: Range<Int> { offset..<(offset + count) }
}

/// The layout of the one flat parameter buffer (and, identically, the flat gradient buffer).
///
/// Order: with token input through an embedding, embedding.weight (V, E) first (its gradient is
/// final last); then layer 0 (weight_ih, weight_hh, bias_ih, bias_hh, and with a learned initial state
/// h0 and for LSTM c0), layer 1, ..., then head.weight, head.bias. Layer k's input width is I for
/// k = 0 and H above. The learned initial states (rnn.h0_l{k}, rnn.c0_l{k}, shape (H)) are rnn-dp's
/// own; PyTorch's modules have none (load with strict=False or pass them as h_0).
public struct ParameterLayout: Equatable, Sendable {
    public let views: [ParamView]
    public let count: Int

    /// The views of one recurrent unit (a layer in one direction).
    public struct Layer: Equatable, Sendable {
        public let wih: ParamView, whh: ParamView, bih: ParamView, bhh: ParamView
        /// Learned initial h and (LSTM) c, when the model has them.
        public let h0: ParamView?, c0: ParamView?
        /// Layer-norm and batch-norm scale and shift, when the model has them.
        public let lnWeight: ParamView?, lnBias: ParamView?, bnWeight: ParamView?, bnBias: ParamView?
    }
    public let layers: [Layer]
    /// embedding.weight (V, E), when the model has one.
    public let embedding: ParamView?

    public init(spec: ModelSpec) {
        var views: [ParamView] = []
        var offset = 0
        func add(_ name: String, _ shape: [Int]) {
            let v = ParamView(name: name, offset: offset, shape: shape)
            views.append(v)
            offset += v.count
        }
        let gh = spec.cell.gates * spec.hiddenSize
        if let E = spec.embeddingSize {
            add("embedding.weight", [spec.input.width, E])  // (V, E)
            embedding = views.last
        } else {
            embedding = nil
        }
        var layers: [Layer] = []
        for v in 0..<spec.units {
            let k = v / spec.directions, suffix = "l\(k)" + (v % spec.directions == 1 ? "_reverse" : "")
            let inWidth = k == 0 ? spec.firstLayerInputWidth : spec.layerOutputWidth
            add("rnn.weight_ih_\(suffix)", [gh, inWidth])  // (G*H, I_k)
            add("rnn.weight_hh_\(suffix)", [gh, spec.hiddenSize])  // (G*H, H)
            add("rnn.bias_ih_\(suffix)", [gh])  // (G*H)
            add("rnn.bias_hh_\(suffix)", [gh])  // (G*H)
            let base = views.count - 4
            var h0: ParamView?, c0: ParamView?
            if spec.learnedInitialState {
                add("rnn.h0_\(suffix)", [spec.hiddenSize])  // (H)
                h0 = views.last
                if spec.cell == .lstm {
                    add("rnn.c0_\(suffix)", [spec.hiddenSize])  // (H)
                    c0 = views.last
                }
            }
            var ln: [ParamView] = [], bn: [ParamView] = []
            if spec.layerNorm {
                add("rnn.ln_weight_\(suffix)", [gh])  // (G*H)
                add("rnn.ln_bias_\(suffix)", [gh])
                ln = Array(views.suffix(2))
            }
            if spec.batchNorm {
                add("rnn.bn_weight_\(suffix)", [gh])  // (G*H)
                add("rnn.bn_bias_\(suffix)", [gh])
                bn = Array(views.suffix(2))
            }
            layers.append(Layer(wih: views[base], whh: views[base + 1], bih: views[base + 2], bhh: views[base + 3], h0: h0, c0: c0,
                                lnWeight: ln.first, lnBias: ln.last, bnWeight: bn.first, bnBias: bn.last))
        }
        if spec.tieWeights {
            precondition(spec.embeddingSize == spec.hiddenSize && spec.outputSize == spec.input.width, "tied weights need E = H and V outputs")
            headWeight = embedding!
            aliases = [ParamView(name: "head.weight", offset: embedding!.offset, shape: embedding!.shape)]
        } else {
            add("head.weight", [spec.outputSize, spec.layerOutputWidth])  // (O, D*H)
            headWeight = views.last!
            aliases = []
        }
        add("head.bias", [spec.outputSize])  // (O)
        self.views = views
        self.layers = layers
        self.count = offset
        tied = spec.tieWeights
    }

    public func view(_ name: String) -> ParamView? { views.first { $0.name == name } }

    /// The views of recurrent unit v (layer v / D, direction v % D).
    public func layer(_ k: Int) -> Layer { layers[k] }

    /// head.weight (O, H): its own view, or with tied weights the embedding's.
    public let headWeight: ParamView
    public var headBias: ParamView { views[views.count - 1] }
    /// Names that files carry for a view stored once (tied weights: head.weight for the embedding).
    public let aliases: [ParamView]
    /// Elements [0, recurrentCount) belong to the recurrent layers (and the embedding); the head
    /// follows. (Tied weights need every_step output, which does not use it.)
    public var recurrentCount: Int { tied ? headBias.offset : headWeight.offset }
    private let tied: Bool
    /// Gradients from this offset on are final once the head's backward is done.
    public var headFinalOffset: Int { tied ? headBias.offset : headWeight.offset }
}
