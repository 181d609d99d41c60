fn main() {
    println!("kiln: CLI under construction");
}
