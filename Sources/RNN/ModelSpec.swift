// What a model is: the choices that decide its parameter layout and its computation.
// Letters used throughout: B batch, T time, I input features, H hidden, G gates (1 for Elman),
// V vocabulary, O outputs, L layers.

public enum CellKind: String, CaseIterable, Sendable {
    /// Elman: h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh).
    case rnn
    /// PyTorch's nn.LSTM, gate order i, f, g, o.
    case lstm
    /// PyTorch's nn.GRU, gate order r, z, n, with n = tanh(W_in x + b_in + r * (W_hn h + b_hn)).
    case gru
    /// Gates per cell: the first dimension of weight_ih / weight_hh is gates * H.
    public var gates: Int {
        switch self {
        case .rnn: return 1
        case .lstm: return 4
        case .gru: return 3
        }
    }
    /// Tensors of recurrent state per layer: (h, c) for LSTM, h otherwise.
    public var stateTensors: Int { self == .lstm ? 2 : 1 }
}

/// The Elman cell's activation (LSTM and GRU use their fixed sigmoid/tanh gates).
public enum Activation: String, CaseIterable, Sendable {
    case tanh, sigmoid, relu
    /// max(z, slope * z), slope from ModelSpec.leakySlope.
    case leakyRelu = "leaky_relu"
}

public enum OutputMode: String, CaseIterable, Sendable {
    /// Many-to-many: the head is applied at every time step.
    case everyStep = "every_step"
    /// Many-to-one: the head is applied at the last time step only.
    case lastStep = "last_step"
}

public enum LossKind: String, CaseIterable, Sendable {
    case crossEntropy = "cross_entropy"
    case mse
}

/// What the first layer reads at each step.
public enum InputKind: Equatable, Sendable {
    /// Token ids in 0..<vocabulary (one-hot in meaning; a column gather of W_ih in computation).
    case tokens(vocabulary: Int)
    /// Dense float features of the given width.
    case dense(features: Int)

    public var width: Int {
        switch self {
        case .tokens(let v): return v
        case .dense(let f): return f
        }
    }
}

public struct ModelSpec: Equatable, Sendable {
    public var cell: CellKind
    public var activation: Activation
    public var input: InputKind
    public var hiddenSize: Int
    public var layers: Int
    public var outputSize: Int
    public var output: OutputMode
    public var loss: LossKind
    /// Divide the gradient of every parameter shared across time steps by T (see Network).
    public var averageOverTime: Bool
    /// Negative-side slope of leaky_relu.
    public var leakySlope: Double = 0.01
    /// The initial state is a trained parameter per layer (rnn.h0_l{k}, and rnn.c0_l{k} for
    /// LSTM), shared by every sample, instead of zeros.
    public var learnedInitialState = false
    /// Layer normalization of the gate pre-activations inside the cells, per sample and step,
    /// over the H units of each gate (rnn.ln_weight_l{k}, rnn.ln_bias_l{k}, (G*H) each).
    /// GRU: on r and z's pre-activations and on n's, x_n + r * (W_hn h + b_hn).
    public var layerNorm = false
    /// Batch normalization of the input-to-hidden pre-activations W_ih x (Laurent et al. 2016,
    /// sequence-wise: statistics over all steps and samples of the global batch), with
    /// rnn.bn_weight_l{k}, rnn.bn_bias_l{k} (G*H) and running statistics for evaluation.
    public var batchNorm = false
    /// Dropout in training passes (inverted: kept elements scaled by 1/(1-p); off in evaluation).
    /// `dropout`: on the output of every recurrent layer but the last (PyTorch's nn.LSTM
    /// dropout=); `inputDropout`: on the dense input of layer 0; `headDropout`: on the head's
    /// input. See Network.DropoutKey for how masks are drawn.
    public var dropout = 0.0
    /// Token input through an embedding (nn.Embedding, `embedding.weight` (V, E)): layer 0 reads
    /// the E-wide rows of its tokens instead of one-hot columns. nil: no embedding.
    public var embeddingSize: Int?
    /// The head's weight is the embedding's (Press and Wolf 2017): one (V, E) parameter, with
    /// E = H and V outputs; files carry it under both names, as PyTorch's state dict does.
    public var tieWeights = false
    /// Bidirectional layers (PyTorch's bidirectional=True): every layer also runs over the
    /// sequence backwards with its own weights (`..._reverse`); the next layer and the head read
    /// the 2H concatenation [forward | backward] at each step; last_step reads PyTorch's h_n, the
    /// forward state after the last step and the backward state after step 0.
    public var bidirectional = false
    /// 2 for bidirectional layers, else 1.
    public var directions: Int { bidirectional ? 2 : 1 }
    /// Recurrent units: (layer, direction) pairs, unit v = layer v / D in direction v % D. Each has
    /// its own weights, activations and initial state ((L * D, C, B, H), as PyTorch's h_0).
    public var units: Int { layers * directions }
    /// The width of a layer's output: D * H.
    public var layerOutputWidth: Int { directions * hiddenSize }
    /// The width of layer 0's input: E with an embedding, else the input's width.
    public var firstLayerInputWidth: Int { embeddingSize ?? input.width }
    public var inputDropout = 0.0
    public var headDropout = 0.0
    /// Variational dropout (Gal and Ghahramani 2016): one mask per sequence, the same at every
    /// time step, at each of the three places (not on the recurrent connections).
    public var variationalDropout = false

    public init(cell: CellKind = .rnn, activation: Activation = .tanh, input: InputKind, hiddenSize: Int,
                layers: Int = 1, outputSize: Int, output: OutputMode = .everyStep, loss: LossKind,
                averageOverTime: Bool = true) {
        self.cell = cell
        self.activation = activation
        self.input = input
        self.hiddenSize = hiddenSize
        self.layers = layers
        self.outputSize = outputSize
        self.output = output
        self.loss = loss
        self.averageOverTime = averageOverTime
    }
}
