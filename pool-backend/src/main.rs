fn main() {
    println!("poold: not yet implemented");
}
