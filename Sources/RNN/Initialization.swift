extension Network {
    /// PyTorch's default initialization: every recurrent weight and bias ~ U(-1/sqrt(H), 1/sqrt(H))
    /// (nn.RNN.reset_parameters), and nn.Linear's kaiming_uniform(a = sqrt 5), which for the head
    /// is U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = H for weight and bias alike.
    /// Values come from the `parameters` stream of the seed, in layout order.
    public func initializeParameters(seed: UInt64) {
        var rng = Xoshiro256(seed: seed, stream: RandomStream.parameters.rawValue)
        let bound = 1 / Double(spec.hiddenSize).squareRoot()
        for i in 0..<layout.count {
            parameters[i] = S((rng.nextDouble() * 2 - 1) * bound)
        }
    }
}
