// What a model is: the choices that decide its parameter layout and its computation.
// Letters used throughout: B batch, T time, I input features, H hidden, G gates (1 for Elman),
// V vocabulary, O outputs, L layers.

public enum CellKind: String, CaseIterable, Sendable {
    case rnn
    /// Gates per cell: the first dimension of weight_ih / weight_hh is gates * H.
    public var gates: Int { 1 }
}

public enum Activation: String, CaseIterable, Sendable {
    case tanh, sigmoid, relu
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
